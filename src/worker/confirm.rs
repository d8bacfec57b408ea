//! Positions waiting for the trailing journal: the pipeline's half of the acknowledgement
//! contract once the journal is written behind the cache (see [`super::pipeline`]).
//!
//! [`Confirmations`] owns the [`Trail`] the stream hands its rows to and a queue of source
//! positions, each tagged with the number of the last journal item handed over before it. A
//! position is passed to [`Source::confirm`] only once the trail reports that number durable,
//! so every action before it is done and journaled; the queue is in stream order, so
//! confirmations are too. Delayed passes' wake-ups wait the same way: their runner looks for
//! `scheduled` rows only once those rows exist.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use super::delayed::Message;
use super::pipeline::Followers;
use crate::failpoints;
use crate::journal::Trail;
use crate::source::{Position, Source, SourceError};

/// How long a stopping pipeline waits for its trailing journal before it leaves the rest
/// unconfirmed (replayed at the next start).
const DRAIN_JOURNAL: Duration = Duration::from_secs(10);

/// The trailing journal and the positions waiting for it.
pub(crate) struct Confirmations {
    /// The stream's journal rows, written behind the cache.
    pub trail: Trail,
    /// Notified when the trail makes work durable: an idle source returns so that the
    /// pipeline can confirm.
    pub wake: Arc<Notify>,
    /// Positions waiting for their journal work: each with the last trail number before it and
    /// whether a batch with changes led to it.
    waiting: VecDeque<(Position, u64, bool)>,
    /// Delayed passes' wake-ups, sent once their `scheduled` rows are durable.
    pub wakes: VecDeque<(u64, tokio::time::Instant)>,
}

impl Confirmations {
    pub fn new(trail: Trail, wake: Arc<Notify>) -> Self {
        Confirmations {
            trail,
            wake,
            waiting: VecDeque::new(),
            wakes: VecDeque::new(),
        }
    }

    /// `position` may be confirmed once every journal item handed over so far is durable.
    pub fn wait_for_journal(&mut self, position: Position, had_work: bool) {
        self.waiting
            .push_back((position, self.trail.assigned(), had_work));
    }

    /// Confirms the newest waiting position whose journal work is durable, and sends the
    /// delayed passes' wake-ups whose rows are.
    pub async fn confirm_durable(
        &mut self,
        source: &mut dyn Source,
        followers: &Followers,
    ) -> Result<(), SourceError> {
        let durable = self.trail.durable();
        while let Some(&(seq, at)) = self.wakes.front() {
            if seq > durable {
                break;
            }
            self.wakes.pop_front();
            if let Some(tx) = &followers.delayed {
                let _ = tx.try_send(Message::Wake(at));
            }
        }
        let mut ready = None;
        let mut had_work = false;
        while let Some((_, seq, _)) = self.waiting.front() {
            if *seq > durable {
                break;
            }
            if let Some((position, _, work)) = self.waiting.pop_front() {
                had_work |= work;
                ready = Some(position);
            }
        }
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

    /// Waits (a bounded time) for the trailing journal, then confirms what it made durable;
    /// anything left is replayed at the next start.
    pub async fn drain(
        &mut self,
        source: &mut dyn Source,
        followers: &Followers,
    ) -> Result<(), SourceError> {
        if !self.trail.flush(DRAIN_JOURNAL).await {
            tracing::warn!(
                "the journal did not catch up before stopping; the changes it holds are replayed at the next start"
            );
        }
        self.confirm_durable(source, followers).await
    }
}
