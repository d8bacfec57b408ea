//! [`Owed`]: a whole-family invalidation that must survive a crash across a change which
//! hides earlier changes from the stream (a table joining the publication: its changes before
//! were never streamed; a new rule: what it covers was never watched). The rows are journaled
//! `pending` *before* that change and executed *after* it: a crash in between leaves them
//! pending, and recovery — which a new start runs after its own publication change — executes
//! them. Executed too early, changes committed between the invalidation and the publication
//! change would be lost; never executed, stale values would stay.

use super::{lifecycle, Completed, InvalidationError, JournalError, JournalStore, OnFailure};
use crate::action::{Action, Target};
use crate::fence::Version;
use crate::target::CacheTarget;

/// Journaled, not yet executed.
#[derive(Debug)]
pub struct Owed {
    ids: Vec<String>,
    marks: Vec<(String, Version)>,
    targets: Vec<Target>,
}

impl Owed {
    /// Journals `actions` as `pending` rows (nothing is executed yet).
    pub async fn record<J: JournalStore + ?Sized>(
        journal: &mut J,
        actions: &[Action],
        marks: Vec<(String, Version)>,
    ) -> Result<Owed, JournalError> {
        let ids = if actions.is_empty() {
            Vec::new()
        } else {
            journal.record_pending(actions).await?
        };
        Ok(Owed {
            ids,
            marks,
            targets: actions.iter().map(|a| a.target.clone()).collect(),
        })
    }

    /// Executes and completes the rows; on a cache failure they go back to `pending` for
    /// recovery.
    pub async fn settle<J, C>(
        self,
        journal: &mut J,
        cache: &mut C,
    ) -> Result<Option<Completed>, InvalidationError>
    where
        J: JournalStore + ?Sized,
        C: CacheTarget + ?Sized,
    {
        if self.ids.is_empty() {
            return Ok(None);
        }
        let targets: Vec<&Target> = self.targets.iter().collect();
        lifecycle::invalidate(
            journal,
            cache,
            self.ids,
            &self.marks,
            &targets,
            OnFailure::Reopen,
        )
        .await
        .map(Some)
    }
}
