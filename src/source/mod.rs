//! Change sources: ordered batches of committed row changes, and a position to confirm.
//!
//! [`Source`] is the seam between a change stream and the rest of the pipeline. Its contract:
//!
//! * **Order** — [`Source::next_batch`] yields transactions in commit order, each whole, except
//!   that a transaction too large for one batch arrives in consecutive chunks
//!   ([`Batch::ends_mid_transaction`]).
//! * **Explicit acknowledgement** — a source never confirms on its own. The caller passes
//!   [`Batch::confirmable`] to [`Source::confirm`] only once every action planned from the
//!   batch (and every batch before it) is done and journaled (see [`crate::worker`]). After a
//!   crash or a reconnect ([`Source::connect`]) the stream resumes at the last confirmed
//!   position, so everything not confirmed is delivered again: at-least-once.
//! * **Wakeable** — the caller confirms positions when their work is durable, which may be
//!   after the batch was processed: an idle [`Source::next_batch`] returns (empty) when woken,
//!   so the confirmation is not held until the next change.
//! * **Liveness** — while a batch is being worked on, [`Source::heartbeat`] keeps the stream
//!   alive without moving the position.
//!
//! [`Position`] is opaque to the worker: it is only handed back to the source that produced it
//! and shown in `/status`. The row vocabulary every source speaks ([`Change`], [`Relation`],
//! [`Transaction`], …) lives in `change`, so rules and planning never see a wire protocol.
//!
//! * [`postgres`] — PostgreSQL logical replication with `pgoutput`.
//! * [`kafka`] — Debezium change events from a Kafka consumer group.
//! * `memory` — an in-memory source for tests of the pipeline itself.

mod change;
pub mod kafka;
#[cfg(test)]
pub(crate) mod memory;
pub mod postgres;

use std::fmt;
use std::time::Duration;

use futures_util::future::BoxFuture;

pub use change::*;

use crate::runtime::Shutdown;

/// Which columns' values the rules read, by table (`schema.table`); the values of other
/// columns are dropped as soon as a change is decoded, so wide rows cost only what the rules
/// need. A table with `None`, or missing, keeps every column; key columns are always kept.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ColumnFilter {
    pub tables: std::collections::HashMap<String, Option<std::collections::BTreeSet<String>>>,
}

impl ColumnFilter {
    /// Whether values of `column` of `table` are kept.
    pub fn keeps(&self, table: &str, column: &str) -> bool {
        match self.tables.get(table) {
            Some(Some(cols)) => cols.contains(column),
            _ => true,
        }
    }

    /// Keeps everything either keeps.
    pub fn union(&self, other: &ColumnFilter) -> ColumnFilter {
        let mut out = self.clone();
        for (t, cols) in &other.tables {
            let merged = match (out.tables.get(t), cols) {
                (Some(None), _) | (_, None) => None,
                (Some(Some(a)), Some(b)) => Some(a.union(b).cloned().collect()),
                (None, Some(b)) => Some(b.clone()),
            };
            out.tables.insert(t.clone(), merged);
        }
        out
    }
}

/// A [`ColumnFilter`] shared between whoever knows the rules and the source, with a
/// generation so the source notices a change.
#[derive(Debug, Clone, Default)]
pub struct SharedFilter(std::sync::Arc<std::sync::RwLock<(u64, std::sync::Arc<ColumnFilter>)>>);

impl SharedFilter {
    pub fn new(filter: ColumnFilter) -> Self {
        SharedFilter(std::sync::Arc::new(std::sync::RwLock::new((
            1,
            std::sync::Arc::new(filter),
        ))))
    }

    /// Replaces the filter (the source applies it to what it decodes next).
    pub fn set(&self, filter: ColumnFilter) {
        let mut g = self.0.write().unwrap_or_else(|p| p.into_inner());
        *g = (g.0 + 1, std::sync::Arc::new(filter));
    }

    pub fn get(&self) -> (u64, std::sync::Arc<ColumnFilter>) {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Where a source can resume from. Only the source that produced a position interprets it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Position {
    /// A PostgreSQL WAL position (a replication slot's confirmed flush LSN).
    Lsn(Lsn),
    /// Kafka: the next offset of every partition read (see [`kafka::offsets`]).
    Offsets(Vec<kafka::offsets::PartitionOffset>),
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Position::Lsn(l) => l.fmt(f),
            Position::Offsets(o) => {
                for (i, p) in o.iter().enumerate() {
                    let sep = if i == 0 { "" } else { "," };
                    write!(f, "{sep}{}/{}@{}", p.topic, p.partition, p.next)?;
                }
                Ok(())
            }
        }
    }
}

/// Where a source stands, for `/status`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Progress {
    /// The last confirmed position.
    pub confirmed: String,
    /// The newest position the server reported.
    pub head: String,
    /// How far behind the head the confirmed position is, in the source's unit (WAL bytes).
    pub lag: u64,
}

/// Errors while preparing or reading a source.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Replication(#[from] postgres::ReplError),
    #[error("postgres: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error(
        "wal_level is {0:?}; logical replication needs 'logical': run \
         ALTER SYSTEM SET wal_level = logical and restart PostgreSQL"
    )]
    WalLevel(String),
    #[error("no rules name any table")]
    NoTables,
    #[error(
        "replication slot {slot:?} exists but is not a pgoutput slot of this database \
         (plugin {plugin:?}); choose another [postgres] slot name"
    )]
    SlotMismatch {
        slot: String,
        plugin: Option<String>,
    },
    #[error("pgoutput stream out of order: {0}")]
    Sequence(#[from] postgres::SequenceError),
    #[error("the source is not connected")]
    NotConnected,
    #[error("the source stream was lost: {0}")]
    Lost(String),
    #[error("kafka: {0}")]
    Kafka(String),
}

impl SourceError {
    /// Whether trying again later may succeed (the server is unreachable, as opposed to
    /// refusing what we asked).
    pub fn is_transient(&self) -> bool {
        match self {
            SourceError::Postgres(e) => e.code().is_none(),
            SourceError::Replication(e) => e.code().is_none(),
            SourceError::NotConnected
            | SourceError::Lost(_)
            | SourceError::Sequence(_)
            | SourceError::Kafka(_) => true,
            _ => false,
        }
    }
}

/// Limits that shape a batch.
#[derive(Debug, Clone)]
pub struct BatchLimits {
    /// Cut a batch once it holds this many changes (a huge transaction is cut in chunks).
    pub max_changes: usize,
    /// Cut a batch once its changes hold about this many bytes (wide rows, TOASTed values).
    pub max_bytes: usize,
    /// How long to wait for more transactions once one is complete. Zero takes only what has
    /// already arrived, which batches naturally under load and adds no latency when idle.
    pub linger: Duration,
    /// Stop taking more this long after the batch first held a whole transaction: under a
    /// steady stream, messages keep arriving one by one, and "take what has arrived" alone
    /// would keep the first change waiting while the batch grows.
    pub max_wait: Duration,
    /// How often to tell the server we are alive while idle or busy.
    pub status_interval: Duration,
}

impl BatchLimits {
    /// The limits `[worker]` configures.
    pub fn from_config(w: &crate::config::WorkerConfig) -> Self {
        BatchLimits {
            max_changes: w.max_batch_changes,
            max_bytes: w.max_batch_bytes.max(1),
            linger: Duration::from_millis(w.batch_linger_ms),
            max_wait: Duration::from_micros(w.batch_max_wait_us),
            status_interval: Duration::from_millis(w.status_interval_ms.max(100)),
        }
    }
}

impl Default for BatchLimits {
    fn default() -> Self {
        BatchLimits {
            max_changes: 10_000,
            max_bytes: 64 << 20,
            linger: Duration::ZERO,
            max_wait: Duration::from_millis(1),
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
    pub confirmable: Option<Position>,
    /// Shutdown was requested while the batch was gathered.
    pub shutdown: bool,
    /// Input that could not be understood, kept before the position passes it (each is also
    /// answered by a conservative, undecodable change in `transactions`).
    pub dead_letters: Vec<DeadLetter>,
}

/// Input a source could not understand, kept in `cache_dead_letters` for a person to look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Which source (`postgres`, `kafka`).
    pub source: &'static str,
    /// Where it was in the stream.
    pub position: String,
    /// Kafka: its topic, partition and offset.
    pub kafka: Option<(String, i32, i64)>,
    /// The raw bytes.
    pub payload: Vec<u8>,
    pub error: String,
}

impl Batch {
    pub fn change_count(&self) -> usize {
        self.transactions.iter().map(|t| t.changes.len()).sum()
    }
}

/// An ordered, resumable stream of committed changes. See the module docs for the contract.
pub trait Source: Send {
    /// Opens the stream at the last confirmed position (again, after a failure).
    fn connect(&mut self) -> BoxFuture<'_, Result<(), SourceError>>;

    /// The next batch. Waits for the first transaction, then takes what else has arrived up
    /// to the limits; returns early (possibly empty, with `shutdown` set) when `shutdown` fires,
    /// and empty when `wake` is notified while nothing has been gathered (the caller has a
    /// position to confirm).
    fn next_batch<'a>(
        &'a mut self,
        shutdown: &'a mut Shutdown,
        wake: &'a tokio::sync::Notify,
    ) -> BoxFuture<'a, Result<Batch, SourceError>>;

    /// Confirms a position: every change before it is done and journaled.
    fn confirm(&mut self, position: Position) -> BoxFuture<'_, Result<(), SourceError>>;

    /// Keeps the stream alive during a long batch, without moving the position.
    fn heartbeat(&mut self) -> BoxFuture<'_, Result<(), SourceError>>;

    /// Closes the stream (a later [`Source::connect`] reopens it).
    fn close(&mut self) -> BoxFuture<'_, ()>;

    /// Where the source stands.
    fn progress(&self) -> Progress;

    /// How often [`Source::heartbeat`] is needed while a batch runs.
    fn heartbeat_interval(&self) -> Duration;
}

/// Opens the source the configuration names, after its one-time set-up (PostgreSQL: the
/// publication for `tables` and the slot), resuming at its last confirmed position.
pub async fn open(
    config: &crate::config::Config,
    client: &tokio_postgres::Client,
    tables: &[String],
    filter: SharedFilter,
) -> Result<Box<dyn Source>, SourceError> {
    if let (crate::config::SourceKind::Kafka, Some(k)) = (config.source.kind, &config.kafka) {
        let catalog = crate::catalog::load_catalog(client, tables).await?;
        return Ok(Box::new(kafka::KafkaSource::new(
            k.clone(),
            BatchLimits::from_config(&config.worker),
            tables,
            kafka::hints(&catalog),
            filter,
        )));
    }
    let pg = config.postgres_config()?;
    let source = postgres::PostgresSource::prepare(
        client,
        pg,
        &config.postgres.slot,
        &config.postgres.publication,
        tables,
        BatchLimits::from_config(&config.worker),
        filter,
    )
    .await?;
    Ok(Box::new(source))
}

/// Whether the source already has a position to resume from (PostgreSQL: the slot exists;
/// Kafka: the consumer group keeps its own offsets, and a table's changes reach it whether or
/// not a rule names the table, so nothing is owed for tables newly watched).
pub async fn resumes(
    config: &crate::config::Config,
    client: &tokio_postgres::Client,
) -> Result<bool, SourceError> {
    if config.source.kind == crate::config::SourceKind::Kafka {
        return Ok(false);
    }
    Ok(client
        .query_opt(
            "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
            &[&config.postgres.slot],
        )
        .await?
        .is_some())
}

/// The tables the source delivers changes of now (PostgreSQL: the publication's). `None`:
/// the source delivers every table's changes (Kafka: whatever the topics carry).
pub async fn watched_tables(
    config: &crate::config::Config,
    client: &tokio_postgres::Client,
) -> Result<Option<Vec<String>>, SourceError> {
    if config.source.kind == crate::config::SourceKind::Kafka {
        return Ok(None);
    }
    Ok(Some(client
        .query(
            "SELECT schemaname || '.' || tablename FROM pg_publication_tables WHERE pubname = $1",
            &[&config.postgres.publication],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect()))
}

/// Makes the source deliver changes of exactly `tables` (a rule reload changed the set;
/// nothing to do for Kafka, whose records of other tables are skipped as they come).
pub async fn watch_tables(
    config: &crate::config::Config,
    client: &tokio_postgres::Client,
    tables: &[String],
) -> Result<(), SourceError> {
    if config.source.kind == crate::config::SourceKind::Kafka {
        return Ok(());
    }
    postgres::prepare(
        client,
        &config.postgres.slot,
        &config.postgres.publication,
        tables,
    )
    .await
    .map(|_| ())
}
