//! The journal: every invalidation's lifecycle as rows of `cache_invalidations`, and the one
//! place that lifecycle is carried out.
//!
//! A request's or a delayed pass's row goes `pending` (or `scheduled`) → `running` →
//! `completed`, or → `failed` with the error; a stream batch's rows are written once, already
//! final, by the [`trail`] (a crash before that replays the changes, which is the recovery). [`lifecycle::invalidate`] is the only code that moves rows along
//! that path around a cache call, and every path uses it: stream batches, delayed passes
//! (`reinvalidate_after`), recovery of rows left open by a crash, application requests, the
//! `cachewarden invalidate` command. All `cache_invalidations` SQL lives in `postgres`.
//!
//! The journal is part of the acknowledgement contract (see [`crate::worker`]): a position is
//! confirmed only after its rows are final. Rows left `pending` or `running` by a crash are
//! re-executed at start ([`JournalStore::open_rows`]), so every row ends final.
//!
//! * `entries` — pure grouping of actions into rows, and rows back into targets.
//! * [`lifecycle`] — record → execute → complete/fail, with its failpoint.
//! * [`owed`] — whole-family invalidations journaled before, and run after, a publication
//!   change.
//! * [`trail`] — the stream's rows, written once in their final state, in groups, behind the
//!   cache: the journal's commit is off the invalidation path.
//! * `postgres` — [`PgJournal`], the PostgreSQL store.

pub mod entries;
pub mod lifecycle;
#[cfg(test)]
pub(crate) mod memory;
pub mod owed;
mod postgres;
pub mod trail;

use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;

pub use entries::{entries, Entry};
pub use lifecycle::{
    invalidate, invalidate_trailing, recover, Completed, InvalidationError, OnFailure,
};
pub use owed::Owed;
pub use postgres::{delete_expired, PgJournal};
pub use trail::{Item, Trail, TrailLimits};

use crate::action::{Action, Target};

/// Errors writing the journal.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("journal: {0}")]
    Unavailable(&'static str),
}

/// A row left open by an earlier run, scheduled, or requested by an application.
#[derive(Debug, Clone)]
pub struct OpenRow {
    pub id: String,
    pub targets: Vec<Target>,
    /// The stream position the row came from (its `lsn`), for fencing; none for requests.
    pub version: Option<crate::fence::Version>,
}

/// Where journal rows are kept. Each call is one statement (one round trip), never one per key.
pub trait JournalStore: Send {
    /// Inserts rows for a batch's actions as `pending`; returns their ids.
    fn record_pending<'a>(
        &'a mut self,
        actions: &'a [Action],
    ) -> BoxFuture<'a, Result<Vec<String>, JournalError>>;

    /// Marks rows `completed` at `at` (when the cache confirmed).
    fn complete<'a>(
        &'a mut self,
        ids: &'a [String],
        at: DateTime<Utc>,
    ) -> BoxFuture<'a, Result<(), JournalError>>;

    /// Marks rows `failed` with the error.
    fn fail<'a>(
        &'a mut self,
        ids: &'a [String],
        error: &'a str,
    ) -> BoxFuture<'a, Result<(), JournalError>>;

    /// Puts rows back to `pending` with the error, for a later attempt to pick up.
    fn reopen<'a>(
        &'a mut self,
        ids: &'a [String],
        error: &'a str,
    ) -> BoxFuture<'a, Result<(), JournalError>>;

    /// Writes a trailing group (see [`trail`]): each item's rows once, in its final state,
    /// and its dead letters, in one commit. Returns how many rows it wrote.
    fn write_group<'a>(
        &'a mut self,
        items: &'a [Item],
    ) -> BoxFuture<'a, Result<usize, JournalError>>;

    /// Claims `scheduled` rows that are due (or all of them), moving them to `running`.
    fn claim_due(
        &mut self,
        limit: i64,
        all: bool,
    ) -> BoxFuture<'_, Result<Vec<OpenRow>, JournalError>>;

    /// Rows still `pending` or `running` that were written at least `min_age` ago, oldest
    /// first, at most `limit`. Rows that cannot be executed are marked `failed` instead.
    fn open_rows(
        &mut self,
        limit: i64,
        min_age: std::time::Duration,
    ) -> BoxFuture<'_, Result<Vec<OpenRow>, JournalError>>;
}
