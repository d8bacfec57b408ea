//! Positions waiting for the trailing journal: the pipeline's half of the acknowledgement
//! contract once the journal is written behind the cache (see [`super::pipeline`]).
//!
//! [`Confirmations`] owns the [`Trail`] the stream hands its rows to, the [`Scans`] it hands
//! its patterns to, and a queue of source positions, each tagged with the number of the last
//! journal item and of the last pattern request made before it. A position is passed to
//! [`Source::confirm`] only once the trail reports that item durable and the scanner that
//! request covered by a finished, journaled pass, so every action before it is done and
//! journaled; the queue is in stream order, so confirmations are too. Delayed passes' wake-ups wait the same way: their runner looks for
//! `scheduled` rows only once those rows exist.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Notify};

use super::delayed::Message;
use super::scans::Scans;
use crate::failpoints;
use crate::journal::Trail;
use crate::source::{Position, Source, SourceError};
use crate::status::Status;

/// How long a stopping pipeline waits for its trailing journal before it leaves the rest
/// unconfirmed (replayed at the next start).
const DRAIN_JOURNAL: Duration = Duration::from_secs(10);

/// A position and what it waits for.
struct Waiting {
    position: Position,
    journal: u64,
    scans: u64,
    had_work: bool,
}

/// The trailing journal and the positions waiting for it.
pub(crate) struct Confirmations {
    /// The stream's journal rows, written behind the cache.
    pub trail: Trail,
    /// The stream's keyspace passes, run beside it.
    pub scans: Scans,
    /// Notified when the trail makes work durable or a pass finishes: an idle source returns so that the
    /// pipeline can confirm.
    pub wake: Arc<Notify>,
    /// Positions waiting for their journal work and passes: each with the last trail number and
    /// pass request before it, and whether a batch with changes led to it.
    waiting: VecDeque<Waiting>,
    /// Delayed passes' wake-ups, sent once their `scheduled` rows are durable.
    pub wakes: VecDeque<(u64, tokio::time::Instant)>,
}

impl Confirmations {
    pub fn new(trail: Trail, scans: Scans, wake: Arc<Notify>) -> Self {
        Confirmations {
            trail,
            scans,
            wake,
            waiting: VecDeque::new(),
            wakes: VecDeque::new(),
        }
    }

    /// `position` may be confirmed once every journal item handed over so far is durable and
    /// every pass requested so far is done.
    pub fn wait_for_journal(&mut self, position: Position, had_work: bool) {
        self.waiting.push_back(Waiting {
            position,
            journal: self.trail.assigned(),
            scans: self.scans.requested(),
            had_work,
        });
    }

    /// Confirms the newest waiting position whose journal work is durable, and sends the
    /// delayed passes' wake-ups whose rows are.
    pub async fn confirm_durable(
        &mut self,
        source: &mut dyn Source,
        delayed: Option<&mpsc::Sender<Message>>,
        status: &Status,
    ) -> Result<(), SourceError> {
        let durable = self.trail.durable();
        while let Some(&(seq, at)) = self.wakes.front() {
            if seq > durable {
                break;
            }
            self.wakes.pop_front();
            if let Some(tx) = delayed {
                let _ = tx.try_send(Message::Wake(at));
            }
        }
        let scanned = self.scans.done();
        let mut ready = None;
        let mut had_work = false;
        while let Some(w) = self.waiting.front() {
            if w.journal > durable || w.scans > scanned {
                break;
            }
            if let Some(w) = self.waiting.pop_front() {
                had_work |= w.had_work;
                ready = Some(w.position);
            }
        }
        let set = |gauge: &std::sync::atomic::AtomicU64, v: u64| gauge.store(v, Ordering::Relaxed);
        set(&status.journal_trailing, self.trail.assigned() - durable);
        set(&status.passes_waiting, self.scans.requested() - scanned);
        set(&status.positions_waiting, self.waiting.len() as u64);
        if let Some(position) = ready {
            if had_work {
                failpoints::hit(failpoints::AFTER_JOURNAL_BEFORE_CONFIRM);
            }
            // Every action before `position` is done on every target and journaled.
            tracing::debug!(position = %position, "confirming");
            source.confirm(position).await?;
        }
        Ok(())
    }

    /// Waits (a bounded time) for the trailing journal and the passes, then confirms what they
    /// finished; anything left is replayed at the next start.
    pub async fn drain(
        &mut self,
        source: &mut dyn Source,
        delayed: Option<&mpsc::Sender<Message>>,
        status: &Status,
    ) -> Result<(), SourceError> {
        if !self.trail.flush(DRAIN_JOURNAL).await {
            tracing::warn!(
                "the journal did not catch up before stopping; the changes it holds are replayed at the next start"
            );
        }
        if !self.scans.flush(DRAIN_JOURNAL).await {
            tracing::warn!(
                "keyspace passes were still running when stopping; the changes they cover are replayed at the next start"
            );
        }
        self.confirm_durable(source, delayed, status).await
    }
}
