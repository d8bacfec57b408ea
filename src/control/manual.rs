//! Operator invalidations — `cachewarden invalidate`, the API's `DELETE /api/v1/keys/{key}` and
//! `POST /api/v1/invalidations` — through the one invalidation lifecycle: a journal row per
//! target, inserted `running` with the reason; warmed keys among them fenced at the current
//! WAL position (no refetch in flight lands after the invalidation); executed on the caches by
//! [`journal::invalidate`], which makes the rows `completed` or `failed`. Nothing here is a
//! second copy of that lifecycle: it only prepares the rows and the fences.

use tokio_postgres::Client;

use crate::action::Target;
use crate::fence;
use crate::journal::{self, InvalidationError, JournalError, OnFailure, PgJournal};
use crate::rules::RuleSet;
use crate::target::{CacheError, CacheTarget, ExecReport};

/// A completed operator invalidation.
#[derive(Debug, Clone)]
pub struct Done {
    /// Its `cache_invalidations` rows, one per target, in the targets' order.
    pub ids: Vec<String>,
    pub report: ExecReport,
}

/// Why an operator invalidation did not complete.
#[derive(Debug, thiserror::Error)]
pub enum ManualError {
    /// The request could not be journaled: nothing was touched.
    #[error("journaling the request: {0}")]
    Journal(#[from] JournalError),
    /// The WAL position for the fences could not be read: the rows were marked failed.
    #[error("reading the WAL position: {0}")]
    Position(#[from] tokio_postgres::Error),
    /// The cache failed: the rows are `failed` with the error (run the request again).
    #[error("the cache failed: {error}")]
    Cache { ids: Vec<String>, error: CacheError },
}

/// Journals and executes `targets` (full Redis names, prefix included); see the module docs.
/// `rules` (the rules in force, when known) decide the fences.
pub async fn invalidate_now<C: CacheTarget + ?Sized>(
    journal: &mut PgJournal,
    client: &Client,
    rules: Option<&RuleSet>,
    key_prefix: &str,
    cache: &mut C,
    targets: &[Target],
    reason: &str,
) -> Result<Done, ManualError> {
    let mut ids = Vec::with_capacity(targets.len());
    for t in targets {
        ids.push(journal.insert_request(t, reason).await?);
    }
    let fences = match rules {
        Some(rules) => match super::current_lsn(client).await {
            Ok(lsn) => fence::fences(rules, key_prefix, targets.iter().map(|t| (t, lsn.into()))),
            Err(e) => {
                use crate::journal::JournalStore;
                let _ = journal.fail(&ids, &e.to_string()).await;
                return Err(e.into());
            }
        },
        None => Vec::new(),
    };
    let refs: Vec<&Target> = targets.iter().collect();
    match journal::invalidate(journal, cache, ids.clone(), &fences, &refs, OnFailure::Fail).await {
        Ok(done) => Ok(Done {
            ids,
            report: done.report,
        }),
        Err(InvalidationError::Journal(e)) => Err(e.into()),
        Err(InvalidationError::Cache(error)) => Err(ManualError::Cache { ids, error }),
    }
}

/// The target an operator's text names: a pattern when it has glob characters, else a key.
pub fn key_or_pattern(full: String) -> Target {
    if full.chars().any(|c| matches!(c, '*' | '?' | '[')) {
        Target::Pattern(full)
    } else {
        Target::Key(full)
    }
}
