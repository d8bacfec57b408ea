//! The PostgreSQL source: publication and slot management, and batching of the decoded stream.
//!
//! [`prepare`] makes sure the publication names exactly the tables the rules watch (never
//! cachewarden's own tables) and that the logical slot exists. [`PostgresSource`] then reads the
//! replication stream and hands the worker [`Batch`]es that end on transaction boundaries (or, for
//! a huge transaction, in bounded chunks). It never confirms a position by itself: the worker
//! calls [`PostgresSource::confirm`] once a batch's effects are done and journaled.

use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::pgoutput::{Assembled, Assembler};
use super::replication::{quote_ident, ReplError, ReplMessage, ReplicationConnection};
use super::{Lsn, Transaction};

/// Errors while preparing or reading the PostgreSQL source.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Replication(#[from] ReplError),
    #[error("postgres: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("{0}")]
    Setup(String),
    #[error("pgoutput stream out of order: {0}")]
    Sequence(#[from] super::pgoutput::SequenceError),
}

/// Splits `schema.table` (default schema `public`) into its parts.
pub fn split_table(name: &str) -> (&str, &str) {
    name.split_once('.').unwrap_or(("public", name))
}

fn quote_table(name: &str) -> String {
    let (schema, table) = split_table(name);
    format!("{}.{}", quote_ident(schema), quote_ident(table))
}

/// Makes sure `wal_level` is logical, the publication covers exactly `tables`, and the slot
/// exists. Returns the slot's confirmed position.
pub async fn prepare(
    client: &tokio_postgres::Client,
    slot: &str,
    publication: &str,
    tables: &[String],
) -> Result<Lsn, SourceError> {
    let wal_level: String = client.query_one("SHOW wal_level", &[]).await?.get(0);
    if wal_level != "logical" {
        return Err(SourceError::Setup(format!(
            "wal_level is {wal_level:?}; logical replication needs 'logical': run \
             ALTER SYSTEM SET wal_level = logical and restart PostgreSQL"
        )));
    }
    if tables.is_empty() {
        return Err(SourceError::Setup("no rules name any table".into()));
    }
    let list = tables
        .iter()
        .map(|t| quote_table(t))
        .collect::<Vec<_>>()
        .join(", ");
    let exists = client
        .query_opt(
            "SELECT 1 FROM pg_publication WHERE pubname = $1",
            &[&publication],
        )
        .await?
        .is_some();
    // Changes to partitions are published under the partitioned table the rules name.
    let verb = if exists {
        format!(
            "ALTER PUBLICATION {p} SET TABLE {list}; ALTER PUBLICATION {p} SET (publish_via_partition_root = true)",
            p = quote_ident(publication)
        )
    } else {
        format!(
            "CREATE PUBLICATION {} FOR TABLE {list} WITH (publish_via_partition_root = true)",
            quote_ident(publication)
        )
    };
    client.batch_execute(&verb).await?;
    let row = client
        .query_opt(
            "SELECT s.plugin, d.datname = current_database(), s.confirmed_flush_lsn::text \
             FROM pg_replication_slots s LEFT JOIN pg_database d ON d.oid = s.datoid \
             WHERE s.slot_name = $1",
            &[&slot],
        )
        .await?;
    let confirmed = match row {
        Some(row) => {
            let plugin: Option<String> = row.get(0);
            let same_db: Option<bool> = row.get(1);
            if plugin.as_deref() != Some("pgoutput") || same_db != Some(true) {
                return Err(SourceError::Setup(format!(
                    "replication slot {slot:?} exists but is not a pgoutput slot of this \
                     database (plugin {plugin:?}); choose another [postgres] slot name"
                )));
            }
            let lsn: Option<String> = row.get(2);
            lsn.and_then(|l| l.parse().ok()).unwrap_or_default()
        }
        None => {
            let row = client
                .query_one(
                    "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')",
                    &[&slot],
                )
                .await?;
            let lsn: String = row.get(0);
            tracing::info!(slot, lsn, "created replication slot");
            lsn.parse().unwrap_or_default()
        }
    };
    Ok(confirmed)
}

/// Limits that shape a batch.
#[derive(Debug, Clone)]
pub struct BatchLimits {
    /// Cut a batch once it holds this many changes (a huge transaction is cut in chunks).
    pub max_changes: usize,
    /// How long to wait for more transactions once one is complete. Zero takes only what has
    /// already arrived, which batches naturally under load and adds no latency when idle.
    pub linger: Duration,
    /// How often to send a standby status update while idle.
    pub status_interval: Duration,
}

impl Default for BatchLimits {
    fn default() -> Self {
        BatchLimits {
            max_changes: 10_000,
            linger: Duration::ZERO,
            status_interval: Duration::from_secs(10),
        }
    }
}

/// What the worker processes in one step.
#[derive(Debug, Default)]
pub struct Batch {
    /// Committed transactions, and at most one trailing chunk of a transaction still open.
    pub transactions: Vec<Transaction>,
    /// Whether the last entry of `transactions` is a chunk of a still-open transaction.
    pub ends_mid_transaction: bool,
    /// The position that may be confirmed once every change in the batch is done.
    pub confirmable: Option<Lsn>,
    /// Shutdown was requested while the batch was gathered.
    pub shutdown: bool,
}

impl Batch {
    pub fn change_count(&self) -> usize {
        self.transactions.iter().map(|t| t.changes.len()).sum()
    }
}

/// A live replication stream from one slot.
pub struct PostgresSource {
    conn: ReplicationConnection,
    assembler: Assembler,
    limits: BatchLimits,
    received: Lsn,
    confirmed: Lsn,
    /// The highest position known to need no further work (commit ends and idle keepalives).
    resumable: Lsn,
    server_wal_end: Lsn,
    last_status: Instant,
}

impl PostgresSource {
    /// Opens the replication connection and starts streaming from the slot.
    pub async fn start(
        config: &tokio_postgres::Config,
        slot: &str,
        publication: &str,
        confirmed: Lsn,
        limits: BatchLimits,
    ) -> Result<Self, SourceError> {
        let mut conn = ReplicationConnection::connect(config, Duration::from_secs(10)).await?;
        conn.start_replication(slot, publication, Lsn(0)).await?;
        Ok(PostgresSource {
            conn,
            assembler: Assembler::new(),
            limits,
            received: confirmed,
            confirmed,
            resumable: confirmed,
            server_wal_end: confirmed,
            last_status: Instant::now(),
        })
    }

    pub fn confirmed(&self) -> Lsn {
        self.confirmed
    }

    pub fn server_wal_end(&self) -> Lsn {
        self.server_wal_end.max(self.received)
    }

    /// Confirms `lsn` to the server: every change before it is done and journaled.
    pub async fn confirm(&mut self, lsn: Lsn) -> Result<(), SourceError> {
        if lsn > self.confirmed {
            self.confirmed = lsn;
        }
        self.send_status().await
    }

    /// Tells the server we are alive (with the unchanged confirmed position) while a long batch
    /// is being processed, so `wal_sender_timeout` does not end the stream.
    pub async fn heartbeat(&mut self) -> Result<(), SourceError> {
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
    pub async fn close(mut self) {
        let _ = self.send_status().await;
        self.conn.close().await;
    }

    /// Handles one frame; returns true when a transaction committed.
    async fn handle(&mut self, msg: ReplMessage, batch: &mut Batch) -> Result<bool, SourceError> {
        match msg {
            ReplMessage::XLogData { start, end, data } => {
                self.received = self.received.max(end).max(start);
                match self.assembler.feed(&data) {
                    Ok(Assembled::Committed(tx)) => {
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
                    Ok(Assembled::Pending) => {}
                    Err(e) => {
                        // The stream lost its framing: reconnect and replay from the slot
                        // rather than confirm past changes that were not understood.
                        tracing::error!(error = %e, lsn = %start, "pgoutput stream out of sequence; reconnecting");
                        return Err(SourceError::Sequence(e));
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
            batch.confirmable = Some(self.resumable);
        }
        batch
    }

    /// What counts towards `max_changes`: changes, and transactions (so a flood of tiny or
    /// empty transactions also ends a batch).
    fn pending_changes(&self, batch: &Batch) -> usize {
        batch.change_count() + batch.transactions.len() + self.assembler.open_len()
    }

    /// Gathers the next batch. Waits for the first transaction; then takes whatever else has
    /// arrived (within `linger`) up to `max_changes`. Sends status updates while idle and
    /// returns early (possibly empty) when `shutdown` flips to true.
    pub async fn next_batch(
        &mut self,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<Batch, SourceError> {
        let mut batch = Batch::default();
        loop {
            if self.pending_changes(&batch) >= self.limits.max_changes {
                return Ok(self.finish(batch));
            }
            let have_work = !batch.transactions.is_empty();
            if have_work && !self.assembler.in_transaction() {
                // A complete batch is ready: take more only if it is already here.
                if let Some(msg) = self.conn.try_recv_buffered()? {
                    self.handle(msg, &mut batch).await?;
                    continue;
                }
                match tokio::time::timeout(self.limits.linger, self.conn.recv()).await {
                    Ok(msg) => {
                        self.handle(msg?, &mut batch).await?;
                        continue;
                    }
                    Err(_) => return Ok(self.finish(batch)),
                }
            }
            if *shutdown.borrow() {
                batch.shutdown = true;
                return Ok(self.finish(batch));
            }
            let wait = self
                .limits
                .status_interval
                .saturating_sub(self.last_status.elapsed());
            tokio::select! {
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
                _ = shutdown.changed() => {
                    batch.shutdown = true;
                    return Ok(self.finish(batch));
                }
            }
        }
    }
}
