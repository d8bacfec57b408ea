//! The trailing journal: stream rows written once, in their final state, in groups, behind the
//! cache.
//!
//! The stream's invalidations do not wait for the journal. Once a batch's cache actions are
//! done, its rows — already `completed` (or `failed`), with their delayed passes (`scheduled`)
//! and dead letters — are handed to [`Trail::push`], which numbers them and returns at once. A
//! writer task of its own gathers what arrives over a short window (`journal_window_ms`, or
//! until `journal_group_rows` actions; a group of fewer than 100 targets, at low rates, keeps
//! gathering up to ten windows, since its cost is mostly per row) and writes the whole group through
//! [`JournalStore::write_group`]: one statement, one commit, whatever the number of batches.
//! It then publishes the highest number it has made durable ([`Trail::durable`]) and wakes the
//! pipeline, which confirms a source position only once every number before it is durable
//! (see [`crate::worker`]): the acknowledgement contract is unchanged, it is pipelined.
//!
//! How far the journal may trail is bounded: at most `journal_trail_batches` items wait for
//! the writer; past that [`Trail::push`] waits, which holds the stream back while PostgreSQL is
//! slow or away. A crash inside that window loses no invalidation: the rows not yet written
//! belong to positions not yet confirmed, so their changes are replayed, executed again
//! (idempotent) and journaled then. A `pending` row would add nothing to that recovery, so the
//! stream writes none: one insert per group, never an update.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, Notify};

use super::{entries, Entry, JournalError, JournalStore};
use crate::action::Action;
use crate::runtime::{numbered, Backoff, Finished, Numbered};
use crate::source::DeadLetter;
use crate::status::{add, Dependency, Status};

/// Journal work handed over by the stream, written in its final state. Actions are held as
/// their rows (one per key family, members only), which is all the journal needs and a
/// fraction of the actions' size while the item waits.
#[derive(Debug, Clone)]
pub enum Item {
    /// Rows of actions the cache completed at `at`.
    Completed { rows: Vec<Entry>, at: DateTime<Utc> },
    /// Rows of actions the cache refused, with the error (the stream retries them).
    Failed { rows: Vec<Entry>, error: String },
    /// Rows of delayed passes falling due at `due`.
    Scheduled {
        rows: Vec<Entry>,
        due: DateTime<Utc>,
    },
    /// Input the source could not understand.
    DeadLetters(Vec<DeadLetter>),
}

impl Item {
    pub fn completed(actions: &[Action], at: DateTime<Utc>) -> Item {
        Item::Completed {
            rows: entries(actions),
            at,
        }
    }

    /// How much the item weighs against `journal_group_rows`: the targets it records.
    fn weight(&self) -> usize {
        let targets = |rows: &[Entry]| rows.iter().map(|e| e.members.len().max(1)).sum();
        match self {
            Item::Completed { rows, .. }
            | Item::Failed { rows, .. }
            | Item::Scheduled { rows, .. } => targets(rows),
            Item::DeadLetters(l) => l.len(),
        }
        .max(1)
    }
}

/// How the writer groups.
#[derive(Debug, Clone, Copy)]
pub struct TrailLimits {
    /// Gather items this long after the first one of a group arrives.
    pub window: Duration,
    /// …or until the group holds this many actions.
    pub group_rows: usize,
    /// Items that may wait for the writer before [`Trail::push`] waits.
    pub max_items: usize,
    /// Upper bound of the retry backoff.
    pub max_backoff: Duration,
}

impl TrailLimits {
    pub fn from_config(w: &crate::config::WorkerConfig) -> Self {
        TrailLimits {
            window: Duration::from_millis(w.journal_window_ms),
            group_rows: w.journal_group_rows.max(1),
            max_items: w.journal_trail_batches.max(1),
            max_backoff: Duration::from_millis(w.max_backoff_ms.max(50)),
        }
    }
}

/// The stream's handle on the trailing journal.
pub struct Trail {
    flush_now: Arc<Notify>,
    queue: Numbered<Item>,
}

impl Trail {
    /// Starts the writer over `store` (a connection of its own). `wake` is notified after
    /// each durable group. The writer ends once the trail is dropped and what it holds is
    /// written.
    pub fn spawn(
        store: Box<dyn JournalStore>,
        limits: TrailLimits,
        status: Arc<Status>,
        wake: Arc<Notify>,
    ) -> Trail {
        let (queue, rx, durable) = numbered(limits.max_items, wake);
        let flush_now = Arc::new(Notify::new());
        let writer = Writer {
            flush_now: flush_now.clone(),
            store,
            limits,
            status,
            durable,
        };
        tokio::spawn(writer.run(rx));
        Trail { flush_now, queue }
    }

    /// Hands `item` to the writer and returns its number; waits only while the trail is full.
    pub async fn push(&mut self, item: Item) -> Result<u64, JournalError> {
        self.queue
            .send(item)
            .await
            .ok_or(JournalError::Unavailable("the journal writer stopped"))
    }

    /// The number of the last item handed over.
    pub fn assigned(&self) -> u64 {
        self.queue.sent()
    }

    /// Every item numbered up to this is durable.
    pub fn durable(&self) -> u64 {
        self.queue.done()
    }

    /// Waits until every item handed over is durable, or `limit` passes; true if it is.
    pub async fn flush(&mut self, limit: Duration) -> bool {
        if self.durable() < self.assigned() {
            self.flush_now.notify_one();
        }
        self.queue.wait_done(limit).await
    }
}

/// Targets below which a group keeps gathering past the window…
const SMALL_GROUP: usize = 100;
/// …up to this many windows.
const SMALL_GROUP_STRETCH: u32 = 10;

/// The writer task.
struct Writer {
    flush_now: Arc<Notify>,
    store: Box<dyn JournalStore>,
    limits: TrailLimits,
    status: Arc<Status>,
    durable: Finished,
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::Receiver<(u64, Item)>) {
        let mut backoff = Backoff::new(self.limits.max_backoff);
        while let Some((first_seq, first)) = rx.recv().await {
            let mut last = first_seq;
            let mut weight = first.weight();
            let mut group = vec![first];
            let opened = tokio::time::Instant::now();
            while weight < self.limits.group_rows {
                // A group this small is mostly per-row overhead: at low rates it gathers for
                // longer (the positions it holds are confirmed later, nothing else waits) —
                // unless it holds delayed passes, whose runner waits for their rows.
                let urgent = group.iter().any(|i| matches!(i, Item::Scheduled { .. }));
                let window = if weight < SMALL_GROUP && !urgent {
                    self.limits.window * SMALL_GROUP_STRETCH
                } else {
                    self.limits.window
                };
                tokio::select! {
                    r = tokio::time::timeout_at(opened + window, rx.recv()) => match r {
                        Ok(Some((seq, item))) => {
                            weight += item.weight();
                            last = seq;
                            group.push(item);
                        }
                        Ok(None) | Err(_) => break,
                    },
                    // The stream is stopping and waits for what is held.
                    _ = self.flush_now.notified() => break,
                }
            }
            // Written whole or not at all; retried until it is (the stream holds its positions).
            loop {
                let t = Instant::now();
                match self.store.write_group(&group).await {
                    Ok(rows) => {
                        let c = &self.status.counters;
                        add(&c.journal_us, t.elapsed().as_micros() as u64);
                        add(&c.journal_rows, rows as u64);
                        add(&c.journal_groups, 1);
                        self.status.clear_dependency_error(Dependency::Journal);
                        backoff.reset();
                        break;
                    }
                    Err(e) => {
                        add(&self.status.counters.journal_errors, 1);
                        if rx.is_closed() {
                            // The stream is gone: nothing waits for these rows any more, and
                            // their positions were never confirmed (they are replayed).
                            tracing::warn!(error = %e, items = group.len(), "the journal cannot be written and the stream stopped; its changes are replayed at the next start");
                            return;
                        }
                        tracing::warn!(error = %e, items = group.len(), "writing the journal failed; retrying (the stream holds its positions)");
                        self.status
                            .set_dependency_error(Dependency::Journal, e.to_string());
                        backoff.wait().await;
                    }
                }
            }
            self.durable.publish(last);
        }
    }
}
