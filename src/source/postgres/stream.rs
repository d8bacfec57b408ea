//! One live replication connection from a slot: reads frames, feeds the `pgoutput`
//! [`Assembler`], and cuts the stream into [`Batch`]es that end on transaction boundaries (or,
//! for a huge transaction, in bounded chunks). It tracks the highest position that needs no
//! further work (commit ends, idle keepalives) and offers it as the batch's `confirmable`
//! position; it sends that position to the server only when told to ([`ReplicationStream::confirm`]).

use std::time::{Duration, Instant};

use futures_util::FutureExt;

use super::pgoutput::{Assembled, Assembler};
use super::replication::{ReplMessage, ReplicationConnection};
use crate::runtime::Shutdown;
use crate::source::{Batch, BatchLimits, DeadLetter, Lsn, Position, SharedFilter, SourceError};

/// A live replication stream from one slot.
pub(super) struct ReplicationStream {
    conn: ReplicationConnection,
    assembler: Assembler,
    limits: BatchLimits,
    received: Lsn,
    confirmed: Lsn,
    /// The highest position known to need no further work (commit ends and idle keepalives).
    resumable: Lsn,
    server_wal_end: Lsn,
    last_status: Instant,
    /// Bytes held by the committed transactions of the batch being gathered.
    batch_bytes: usize,
    /// Which columns' values the rules need, and the generation applied.
    filter: SharedFilter,
    filter_gen: u64,
}

/// Whether the batch's first transaction committed long ago: the stream is draining a backlog,
/// where bigger batches drain faster and a bound on the batch's wait would gain nothing. (By
/// the server's clock; a skewed clock only moves the point where batches stop being bounded.)
fn draining_backlog(batch: &Batch) -> bool {
    const BACKLOG: chrono::TimeDelta = chrono::TimeDelta::milliseconds(100);
    batch
        .transactions
        .first()
        .is_some_and(|t| chrono::Utc::now() - t.commit_time > BACKLOG)
}

impl ReplicationStream {
    /// Opens the replication connection and starts streaming from the slot.
    pub(super) async fn start(
        config: &crate::db::PgConfig,
        slot: &str,
        publication: &str,
        confirmed: Lsn,
        limits: BatchLimits,
        filter: SharedFilter,
    ) -> Result<Self, SourceError> {
        let mut conn = ReplicationConnection::connect(config, Duration::from_secs(10)).await?;
        // Domains render as their base types (two levels of domain over domain).
        let domains = conn
            .simple_query(
                "SELECT t.oid::text, coalesce(nullif(b.typbasetype, 0), t.typbasetype)::text \
                 FROM pg_type t JOIN pg_type b ON b.oid = t.typbasetype WHERE t.typtype = 'd'",
            )
            .await?
            .into_iter()
            .filter_map(|r| {
                let oid = r.first()?.as_ref()?.parse().ok()?;
                let base = r.get(1)?.as_ref()?.parse().ok()?;
                Some((oid, base))
            })
            .collect();
        conn.start_replication(slot, publication, Lsn(0)).await?;
        Ok(ReplicationStream {
            conn,
            assembler: Assembler::with_domains(domains),
            limits,
            received: confirmed,
            confirmed,
            resumable: confirmed,
            server_wal_end: confirmed,
            last_status: Instant::now(),
            batch_bytes: 0,
            filter,
            filter_gen: 0,
        })
    }

    pub(super) fn confirmed(&self) -> Lsn {
        self.confirmed
    }

    pub(super) fn server_wal_end(&self) -> Lsn {
        self.server_wal_end.max(self.received)
    }

    /// Confirms `lsn` to the server: every change before it is done and journaled.
    pub(super) async fn confirm(&mut self, lsn: Lsn) -> Result<(), SourceError> {
        if lsn > self.confirmed {
            self.confirmed = lsn;
        }
        self.send_status().await
    }

    /// Tells the server we are alive (with the unchanged confirmed position) while a long batch
    /// is being processed, so `wal_sender_timeout` does not end the stream.
    pub(super) async fn heartbeat(&mut self) -> Result<(), SourceError> {
        self.send_status().await
    }

    async fn send_status(&mut self) -> Result<(), SourceError> {
        self.last_status = Instant::now();
        self.conn
            .send_status(self.received.max(self.confirmed), self.confirmed)
            .await?;
        Ok(())
    }

    /// Sends a final status update and closes the stream.
    pub(super) async fn close(mut self) {
        let _ = self.send_status().await;
        self.conn.close().await;
    }

    /// Handles one frame; returns true when a transaction committed.
    async fn handle(&mut self, msg: ReplMessage, batch: &mut Batch) -> Result<bool, SourceError> {
        match msg {
            ReplMessage::XLogData { start, end, data } => {
                self.received = self.received.max(end).max(start);
                let (gen, filter) = self.filter.get();
                if gen != self.filter_gen {
                    self.assembler.set_filter(filter);
                    self.filter_gen = gen;
                }
                let open_bytes = self.assembler.open_bytes();
                match self
                    .assembler
                    .feed_lenient(&data, start, chrono::Utc::now())
                {
                    Assembled::Committed(tx) => {
                        self.batch_bytes += open_bytes;
                        self.resumable = self.resumable.max(tx.end_lsn);
                        // A chunk of this transaction may already be in the batch: merge.
                        match batch.transactions.last_mut() {
                            Some(last) if batch.ends_mid_transaction && last.xid == tx.xid => {
                                last.changes.extend(tx.changes);
                                last.end_lsn = tx.end_lsn;
                                last.commit_lsn = tx.commit_lsn;
                            }
                            _ => batch.transactions.push(tx),
                        }
                        batch.ends_mid_transaction = false;
                        return Ok(true);
                    }
                    Assembled::Pending => {}
                    Assembled::Poisoned {
                        error,
                        conservative,
                    } => {
                        // Reconnecting would replay the same bytes forever: keep them as a dead
                        // letter, invalidate conservatively, move on.
                        tracing::error!(error = %error, lsn = %start, "pgoutput message cannot be placed; dead letter, invalidating whole key families");
                        batch.dead_letters.push(DeadLetter {
                            source: "postgres",
                            position: start.to_string(),
                            kafka: None,
                            payload: data.to_vec(),
                            error,
                        });
                        if !self.assembler.in_transaction() {
                            self.resumable = self.resumable.max(conservative.end_lsn);
                        }
                        batch.transactions.push(conservative);
                        batch.ends_mid_transaction = false;
                        return Ok(true);
                    }
                }
            }
            ReplMessage::Keepalive { wal_end, reply } => {
                self.server_wal_end = self.server_wal_end.max(wal_end);
                if !self.assembler.in_transaction() && !batch.ends_mid_transaction {
                    // Everything before a keepalive has been sent; nothing is pending here.
                    self.resumable = self.resumable.max(wal_end);
                }
                if reply {
                    self.send_status().await?;
                }
            }
        }
        Ok(false)
    }

    fn finish(&mut self, mut batch: Batch) -> Batch {
        if self.assembler.in_transaction() && self.assembler.open_len() > 0 {
            if let Some(chunk) = self.assembler.drain_open() {
                match batch.transactions.last_mut() {
                    Some(last) if batch.ends_mid_transaction && last.xid == chunk.xid => {
                        last.changes.extend(chunk.changes)
                    }
                    _ => batch.transactions.push(chunk),
                }
                batch.ends_mid_transaction = true;
            }
        }
        if self.resumable > self.confirmed {
            batch.confirmable = Some(Position::Lsn(self.resumable));
        }
        batch
    }

    /// What counts towards `max_changes`: changes, and transactions (so a flood of tiny or
    /// empty transactions also ends a batch).
    fn pending_changes(&self, batch: &Batch) -> usize {
        batch.change_count() + batch.transactions.len() + self.assembler.open_len()
    }

    /// Whether the batch reached a limit: changes (and transactions), or bytes held.
    fn full(&self, batch: &Batch) -> bool {
        self.pending_changes(batch) >= self.limits.max_changes
            || self.batch_bytes + self.assembler.open_bytes() >= self.limits.max_bytes
    }

    /// Gathers the next batch. Waits for the first transaction; then takes whatever else has
    /// arrived (within `linger`) up to `max_changes`, for at most `max_wait` after the first
    /// transaction was whole (then it finishes the transaction it is in and stops) unless it is
    /// draining a backlog. Sends status updates while idle and
    /// returns early (possibly empty) when `shutdown` flips to true, and empty when `wake` is
    /// notified while nothing is gathered.
    pub(super) async fn next_batch(
        &mut self,
        shutdown: &mut Shutdown,
        wake: &tokio::sync::Notify,
    ) -> Result<Batch, SourceError> {
        let mut batch = Batch::default();
        self.batch_bytes = 0;
        // When the batch first held a whole transaction: a steady stream must not grow it (and
        // the wait of its first change) without bound.
        let mut ready_since: Option<Instant> = None;
        let max_wait = self.limits.max_wait.max(self.limits.linger);
        loop {
            if self.full(&batch) {
                return Ok(self.finish(batch));
            }
            let have_work = !batch.transactions.is_empty();
            if have_work && !self.assembler.in_transaction() {
                // A complete batch is ready: take more only if it is already here, and only
                // for a moment.
                let since = *ready_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= max_wait && !draining_backlog(&batch) {
                    return Ok(self.finish(batch));
                }
                if let Some(msg) = self.conn.try_recv_buffered()? {
                    self.handle(msg, &mut batch).await?;
                    continue;
                }
                // Without a linger, only what the socket already holds: a zero timeout would
                // still wait for the timer wheel's next tick (up to a millisecond).
                let more = if self.limits.linger.is_zero() {
                    self.conn.recv().now_or_never()
                } else {
                    tokio::time::timeout(self.limits.linger, self.conn.recv())
                        .await
                        .ok()
                };
                match more {
                    Some(msg) => {
                        self.handle(msg?, &mut batch).await?;
                        continue;
                    }
                    None => return Ok(self.finish(batch)),
                }
            }
            if shutdown.is_shutdown() {
                batch.shutdown = true;
                return Ok(self.finish(batch));
            }
            let wait = self
                .limits
                .status_interval
                .saturating_sub(self.last_status.elapsed());
            let idle = batch.transactions.is_empty() && !self.assembler.in_transaction();
            tokio::select! {
                _ = wake.notified(), if idle => return Ok(self.finish(batch)),
                msg = self.conn.recv() => {
                    self.handle(msg?, &mut batch).await?;
                    // An idle keepalive moved the resumable position: confirm it right away so
                    // the slot does not hold WAL we have no work for.
                    if batch.transactions.is_empty() && !self.assembler.in_transaction()
                        && self.resumable > self.confirmed {
                        return Ok(self.finish(batch));
                    }
                }
                _ = tokio::time::sleep(wait) => {
                    // Idle: let the server advance the slot past WAL we have no work for.
                    if batch.transactions.is_empty() && !self.assembler.in_transaction()
                        && self.resumable > self.confirmed {
                        return Ok(self.finish(batch));
                    }
                    self.send_status().await?;
                }
                _ = shutdown.recv() => {
                    batch.shutdown = true;
                    return Ok(self.finish(batch));
                }
            }
        }
    }
}
