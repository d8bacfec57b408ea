//! Application requests: rows applications insert into `cache_invalidations` with status
//! `pending` and no rule are claimed (`running`), fenced, executed through the invalidation
//! lifecycle, and completed — or put back to `pending` with the error, for the next poll.

use super::{current_lsn, Controller};
use crate::fence;
use crate::journal::{self, InvalidationError, OnFailure, PgJournal};
use crate::status::add;
use crate::target::Targets;

/// Requests claimed per poll.
const CLAIM: i64 = 500;

/// Why serving requests failed this poll.
#[derive(Debug, thiserror::Error)]
pub(super) enum RequestError {
    #[error(transparent)]
    Journal(#[from] crate::journal::JournalError),
    #[error("reading the WAL position: {0}")]
    Position(#[from] tokio_postgres::Error),
    #[error(transparent)]
    Invalidation(#[from] InvalidationError),
}

impl Controller {
    /// Claims application requests, executes and completes them.
    pub(super) async fn serve_requests(
        &self,
        client: &tokio_postgres::Client,
        journal: &mut PgJournal,
        targets: &mut Targets,
    ) -> Result<(), RequestError> {
        let rows = journal.claim_requests(CLAIM).await?;
        if rows.is_empty() {
            return Ok(());
        }
        let ids: Vec<String> = rows.iter().map(|r| r.id.clone()).collect();
        let all: Vec<_> = rows.iter().flat_map(|r| r.targets.iter()).collect();
        // Warmed keys among them are fenced first, at the current WAL position (newer than
        // any refetch in flight).
        let snap = self.live.snapshot();
        let version = match current_lsn(client).await {
            Ok(lsn) => lsn.into(),
            Err(e) => {
                use crate::journal::JournalStore;
                journal.reopen(&ids, &e.to_string()).await?;
                return Err(e.into());
            }
        };
        let fences = fence::fences(
            &snap.rules,
            &snap.cx.key_prefix,
            all.iter().map(|t| (*t, version)),
        );
        let done =
            journal::invalidate(journal, targets, ids, &fences, &all, OnFailure::Reopen).await?;
        add(&self.status.counters.requests, rows.len() as u64);
        tracing::info!(
            requests = rows.len(),
            keys_removed = done.report.removed,
            "executed invalidation requests"
        );
        Ok(())
    }
}
