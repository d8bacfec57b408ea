//! The invalidation lifecycle, written once: rows in the journal, executed on the cache
//! targets, then made final.
//!
//! [`invalidate`] runs rows already in the journal (`pending`/`running`: recovered rows, claimed
//! requests and delayed passes, the CLI's request, owed whole families): the cache call, then
//! the rows become `completed`. When the cache fails, the rows become `failed`
//! ([`OnFailure::Fail`]: the caller retries with new rows) or go back to `pending`
//! ([`OnFailure::Reopen`]: a later poll retries the same rows). When the journal fails, the
//! error says so and the caller retries the whole call: executing is idempotent, and nothing
//! counts as done until its rows are `completed`.
//!
//! A stream batch takes a shorter path, [`invalidate_trailing`]: the cache call first, then its
//! rows, already final, go to the trailing journal ([`super::trail`]) without waiting for the
//! commit; the pipeline confirms the batch's position once that journal work is durable.
//!
//! [`recover`] finishes rows someone left open, through the same lifecycle: at start, and
//! while running for rows older than `recover_after_secs`.

use std::time::{Duration, Instant};

/// Open journal rows re-executed per round by [`recover`].
const RECOVER_CHUNK: i64 = 5000;

use chrono::{DateTime, Utc};

use super::trail::{Item, Trail};
use super::{JournalError, JournalStore};
use crate::action::{Action, Target};
use crate::failpoints;
use crate::fence::Version;
use crate::target::{CacheError, CacheTarget, ExecReport};

/// What becomes of the rows when the cache fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFailure {
    /// `failed`, with the error: the caller retries with new rows.
    Fail,
    /// Back to `pending`, with the error: a later attempt retries these rows.
    Reopen,
}

/// A finished invalidation.
#[derive(Debug, Clone)]
pub struct Completed {
    pub report: ExecReport,
    /// When the cache confirmed (the rows' `completed_at`).
    pub at: DateTime<Utc>,
    /// Journal rows completed.
    pub rows: usize,
    /// Time spent in the journal (insert and completion).
    pub journal_time: Duration,
    /// Time spent on the cache targets.
    pub cache_time: Duration,
}

/// Why an invalidation did not complete. Either way nothing is confirmed, and retrying is safe.
#[derive(Debug, thiserror::Error)]
pub enum InvalidationError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(transparent)]
    Cache(#[from] CacheError),
}

/// Journals and executes one invalidation; see the module docs.
pub async fn invalidate<J, C>(
    journal: &mut J,
    cache: &mut C,
    ids: Vec<String>,
    marks: &[(String, Version)],
    targets: &[&Target],
    on_failure: OnFailure,
) -> Result<Completed, InvalidationError>
where
    J: JournalStore + ?Sized,
    C: CacheTarget + ?Sized,
{
    let t = Instant::now();
    let result = cache.execute(marks, targets).await;
    let (at, cache_time) = (Utc::now(), t.elapsed());
    match result {
        Ok(report) => {
            failpoints::hit(failpoints::AFTER_CACHE_BEFORE_JOURNAL);
            let t = Instant::now();
            journal.complete(&ids, at).await?;
            let journal_time = t.elapsed();
            Ok(Completed {
                report,
                at,
                rows: ids.len(),
                journal_time,
                cache_time,
            })
        }
        Err(e) => {
            let msg = e.to_string();
            let r = match on_failure {
                OnFailure::Fail => journal.fail(&ids, &msg).await,
                OnFailure::Reopen => journal.reopen(&ids, &msg).await,
            };
            if let Err(je) = r {
                tracing::warn!(error = %je, "could not journal the failure");
            }
            Err(InvalidationError::Cache(e))
        }
    }
}

/// A stream batch's invalidation: executes `actions` on the cache, then hands them to `trail`
/// as rows in their final state (`completed`) and returns without waiting for them to be
/// durable. On failure the rows are handed over `failed` (with the error), for the caller to
/// retry. The trail number to wait for is the trail's [`Trail::assigned`] after the call.
pub async fn invalidate_trailing<C>(
    trail: &mut Trail,
    cache: &mut C,
    actions: &[Action],
    marks: &[(String, Version)],
) -> Result<Completed, InvalidationError>
where
    C: CacheTarget + ?Sized,
{
    let t = Instant::now();
    let result = {
        let targets: Vec<&Target> = actions.iter().map(|a| &a.target).collect();
        cache.execute(marks, &targets).await
    };
    let (at, cache_time) = (Utc::now(), t.elapsed());
    match result {
        Ok(report) => {
            failpoints::hit(failpoints::AFTER_CACHE_BEFORE_JOURNAL);
            let t = Instant::now();
            if !actions.is_empty() {
                trail.push(Item::completed(actions, at)).await?;
            }
            Ok(Completed {
                report,
                at,
                rows: actions.len(),
                journal_time: t.elapsed(),
                cache_time,
            })
        }
        Err(e) => {
            let failed = Item::Failed {
                rows: super::entries(actions),
                error: e.to_string(),
            };
            if let Err(je) = trail.push(failed).await {
                tracing::warn!(error = %je, "could not journal the failure");
            }
            Err(InvalidationError::Cache(e))
        }
    }
}

/// Re-executes journal rows left `pending`/`running` at least `min_age` ago — by a crash, a
/// cancelled batch, a request whose executor failed, or an application — and completes them
/// (or puts them back to `pending` if the cache fails). Returns how many rows were completed.
pub async fn recover<J, C>(
    journal: &mut J,
    cache: &mut C,
    min_age: Duration,
) -> Result<usize, InvalidationError>
where
    J: JournalStore + ?Sized,
    C: CacheTarget + ?Sized,
{
    let mut total = 0;
    loop {
        let rows = journal.open_rows(RECOVER_CHUNK, min_age).await?;
        if rows.is_empty() {
            return Ok(total);
        }
        let ids: Vec<String> = rows.iter().map(|r| r.id.clone()).collect();
        let targets: Vec<_> = rows.iter().flat_map(|r| r.targets.iter()).collect();
        invalidate(journal, cache, ids, &[], &targets, OnFailure::Reopen).await?;
        total += rows.len();
    }
}
