//! An in-memory journal for unit tests of the pipeline: rows with their status and targets,
//! failures injected on demand. Same contract as [`super::PgJournal`].

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use futures_util::FutureExt;

use super::{JournalError, JournalStore, OpenRow};
use crate::action::{Action, Target};

/// One journal row.
#[derive(Debug, Clone)]
pub struct MemoryRow {
    pub status: &'static str,
    pub targets: Vec<Target>,
}

/// What the in-memory journal holds.
#[derive(Debug, Default)]
pub struct MemoryRows {
    /// Rows by id, ids in insertion order.
    pub rows: BTreeMap<u64, MemoryRow>,
    next: u64,
    /// Calls still to fail before doing anything.
    pub fail_next: u32,
    pub dead_letters: Vec<crate::source::DeadLetter>,
    /// Refuse every trailing group (the other calls work).
    pub refuse_groups: bool,
}

/// A shared handle on one in-memory journal.
#[derive(Debug, Clone, Default)]
pub struct MemoryJournal {
    state: Arc<Mutex<MemoryRows>>,
}

impl MemoryJournal {
    pub fn new() -> Self {
        MemoryJournal::default()
    }

    pub fn state(&self) -> MutexGuard<'_, MemoryRows> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn fail_next(&self, n: u32) {
        self.state().fail_next = n;
    }

    fn check(&self) -> Result<MutexGuard<'_, MemoryRows>, JournalError> {
        let mut s = self.state();
        if s.fail_next > 0 {
            s.fail_next -= 1;
            return Err(JournalError::Unavailable("injected failure"));
        }
        Ok(s)
    }

    fn set(&self, ids: &[String], status: &'static str) -> Result<(), JournalError> {
        let mut s = self.check()?;
        for id in ids {
            if let Some(r) = id.parse().ok().and_then(|id: u64| s.rows.get_mut(&id)) {
                r.status = status;
            }
        }
        Ok(())
    }
}

/// Inserts the rows of `actions` with `status`; returns their ids.
fn insert(
    s: &mut MemoryRows,
    rows: Vec<super::Entry>,
    status: &'static str,
) -> Result<Vec<String>, JournalError> {
    let mut ids = Vec::new();
    for e in rows {
        let members = e.members.into_iter().map(Some).collect::<Vec<_>>();
        let targets = super::entries::row_targets(
            e.kind,
            e.key_pattern,
            (!members.is_empty()).then_some(members),
        )
        .map_err(|_| JournalError::Unavailable("an action makes an invalid row"))?;
        s.next += 1;
        s.rows.insert(s.next, MemoryRow { status, targets });
        ids.push(s.next.to_string());
    }
    Ok(ids)
}

impl JournalStore for MemoryJournal {
    fn record_pending<'a>(
        &'a mut self,
        actions: &'a [Action],
    ) -> BoxFuture<'a, Result<Vec<String>, JournalError>> {
        async move {
            let mut s = self.check()?;
            insert(&mut s, super::entries(actions), "pending")
        }
        .boxed()
    }

    fn complete<'a>(
        &'a mut self,
        ids: &'a [String],
        _at: DateTime<Utc>,
    ) -> BoxFuture<'a, Result<(), JournalError>> {
        async move { self.set(ids, "completed") }.boxed()
    }

    fn fail<'a>(
        &'a mut self,
        ids: &'a [String],
        _error: &'a str,
    ) -> BoxFuture<'a, Result<(), JournalError>> {
        async move { self.set(ids, "failed") }.boxed()
    }

    fn reopen<'a>(
        &'a mut self,
        ids: &'a [String],
        _error: &'a str,
    ) -> BoxFuture<'a, Result<(), JournalError>> {
        async move { self.set(ids, "pending") }.boxed()
    }

    fn write_group<'a>(
        &'a mut self,
        items: &'a [super::Item],
    ) -> BoxFuture<'a, Result<usize, JournalError>> {
        async move {
            let mut s = self.check()?;
            if s.refuse_groups {
                return Err(JournalError::Unavailable("injected failure of groups"));
            }
            let mut written = 0;
            for item in items {
                let (rows, status) = match item {
                    super::Item::Completed { rows, .. } => (rows, "completed"),
                    super::Item::Failed { rows, .. } => (rows, "failed"),
                    super::Item::Scheduled { rows, .. } => (rows, "scheduled"),
                    super::Item::DeadLetters(l) => {
                        s.dead_letters.extend_from_slice(l);
                        continue;
                    }
                };
                written += insert(&mut s, rows.clone(), status)?.len();
            }
            Ok(written)
        }
        .boxed()
    }

    fn claim_due(
        &mut self,
        limit: i64,
        _all: bool,
    ) -> BoxFuture<'_, Result<Vec<OpenRow>, JournalError>> {
        async move {
            let mut s = self.check()?;
            let mut out = Vec::new();
            for (id, r) in s.rows.iter_mut().filter(|(_, r)| r.status == "scheduled") {
                if out.len() as i64 >= limit {
                    break;
                }
                r.status = "running";
                out.push(OpenRow {
                    id: id.to_string(),
                    targets: r.targets.clone(),
                    version: None,
                });
            }
            Ok(out)
        }
        .boxed()
    }

    fn open_rows(
        &mut self,
        limit: i64,
        _min_age: std::time::Duration,
    ) -> BoxFuture<'_, Result<Vec<OpenRow>, JournalError>> {
        async move {
            let s = self.check()?;
            Ok(s.rows
                .iter()
                .filter(|(_, r)| matches!(r.status, "pending" | "running"))
                .take(usize::try_from(limit).unwrap_or(0))
                .map(|(id, r)| OpenRow {
                    id: id.to_string(),
                    targets: r.targets.clone(),
                    version: None,
                })
                .collect())
        }
        .boxed()
    }
}
