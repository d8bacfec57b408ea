//! An in-memory source for unit tests of the pipeline: a fixed list of committed
//! transactions, delivered in order a few at a time, resumed at the confirmed position on every
//! [`Source::connect`] (as a replication slot does), with stream failures injected on demand and
//! a check run on every confirmation, so tests can assert what must hold when a position is
//! confirmed.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;

use super::{Batch, DeadLetter, Lsn, Position, Progress, Source, SourceError, Transaction};
use crate::runtime::Shutdown;

/// Called with each confirmed position; returns a description of what is wrong, if anything.
pub type ConfirmCheck = Arc<dyn Fn(Lsn) -> Option<String> + Send + Sync>;

/// The shared state of a memory source.
#[derive(Default)]
pub struct MemoryLog {
    pub transactions: Vec<Transaction>,
    /// The slot's confirmed position: survives "crashes" (dropping the source).
    pub confirmed: Lsn,
    /// Every confirmation, in order.
    pub confirms: Vec<Lsn>,
    /// What the confirmation check found wrong.
    pub violations: Vec<String>,
    /// Batches still to fail (the stream is lost) before delivering anything.
    pub fail_next: u32,
    /// Dead letters delivered with the batch holding the transaction of that index.
    pub dead_letters: Vec<(usize, DeadLetter)>,
}

/// A source over a [`MemoryLog`].
pub struct MemorySource {
    log: Arc<Mutex<MemoryLog>>,
    check: ConfirmCheck,
    per_batch: usize,
    cursor: Option<usize>,
}

impl MemorySource {
    pub fn new(log: Arc<Mutex<MemoryLog>>, per_batch: usize, check: ConfirmCheck) -> Self {
        MemorySource {
            log,
            check,
            per_batch: per_batch.max(1),
            cursor: None,
        }
    }

    fn log(&self) -> MutexGuard<'_, MemoryLog> {
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Source for MemorySource {
    fn connect(&mut self) -> BoxFuture<'_, Result<(), SourceError>> {
        async move {
            let log = self.log();
            let from = log
                .transactions
                .iter()
                .position(|t| t.end_lsn > log.confirmed)
                .unwrap_or(log.transactions.len());
            drop(log);
            self.cursor = Some(from);
            Ok(())
        }
        .boxed()
    }

    fn next_batch<'a>(
        &'a mut self,
        shutdown: &'a mut Shutdown,
        wake: &'a tokio::sync::Notify,
    ) -> BoxFuture<'a, Result<Batch, SourceError>> {
        async move {
            let cursor = self.cursor.ok_or(SourceError::NotConnected)?;
            // A little time passes per batch, so a test's deadline can fall anywhere.
            tokio::time::sleep(Duration::from_millis(1)).await;
            let taken = {
                let mut log = self.log();
                if log.fail_next > 0 {
                    log.fail_next -= 1;
                    None
                } else {
                    let end = (cursor + self.per_batch).min(log.transactions.len());
                    let done = end == log.transactions.len()
                        && log
                            .transactions
                            .last()
                            .is_none_or(|t| t.end_lsn <= log.confirmed);
                    let letters: Vec<DeadLetter> = log
                        .dead_letters
                        .iter()
                        .filter(|(i, _)| (cursor..end).contains(i))
                        .map(|(_, d)| d.clone())
                        .collect();
                    Some((log.transactions[cursor..end].to_vec(), end, done, letters))
                }
            };
            let Some((transactions, end, done, dead_letters)) = taken else {
                self.cursor = None;
                return Err(SourceError::Lost("injected failure".into()));
            };
            if transactions.is_empty() {
                if !done {
                    // Everything was delivered but not all confirmed: nothing more will come
                    // but a wake-up (something became confirmable) or the end.
                    tokio::select! {
                        _ = wake.notified() => return Ok(Batch::default()),
                        _ = shutdown.recv() => {}
                    }
                }
                return Ok(Batch {
                    shutdown: true,
                    ..Batch::default()
                });
            }
            self.cursor = Some(end);
            let confirmable = transactions.last().map(|t| Position::Lsn(t.end_lsn));
            Ok(Batch {
                transactions,
                ends_mid_transaction: false,
                confirmable,
                shutdown: shutdown.is_shutdown(),
                dead_letters,
            })
        }
        .boxed()
    }

    fn confirm(&mut self, position: Position) -> BoxFuture<'_, Result<(), SourceError>> {
        async move {
            let Position::Lsn(lsn) = position else {
                return Err(SourceError::Lost(format!("not a WAL position: {position}")));
            };
            let problem = (self.check)(lsn);
            let mut log = self.log();
            if let Some(p) = problem {
                log.violations.push(p);
            }
            log.confirms.push(lsn);
            log.confirmed = log.confirmed.max(lsn);
            Ok(())
        }
        .boxed()
    }

    fn heartbeat(&mut self) -> BoxFuture<'_, Result<(), SourceError>> {
        async move { Ok(()) }.boxed()
    }

    fn close(&mut self) -> BoxFuture<'_, ()> {
        async move {
            self.cursor = None;
        }
        .boxed()
    }

    fn progress(&self) -> Progress {
        let log = self.log();
        let head = log.transactions.last().map_or(Lsn(0), |t| t.end_lsn);
        Progress {
            confirmed: log.confirmed.to_string(),
            head: head.to_string(),
            lag: head.0.saturating_sub(log.confirmed.0),
        }
    }

    fn heartbeat_interval(&self) -> Duration {
        Duration::from_secs(10)
    }
}
