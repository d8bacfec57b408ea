//! Monitoring beside the data path: what keeps the product's own tables bounded and, as they
//! grow, the figures operators watch. Nothing here is on the hot path; every task runs on a
//! connection of its own and gives way to shutdown.
//!
//! * [`retention`] — deletes expired `cache_invalidations` and `cache_metrics` rows in small
//!   batches.
//! * [`families`] — per-rule key families and the estimates a keyspace sample gives (pure).
//! * [`samples`] — every `[monitor] interval`, the `cache_metrics` rows: a whole-instance row of
//!   per-interval deltas and a row per active rule.
//! * [`keyspace_events`] — per-rule misses and evictions from Redis keyspace notifications.
//! * [`probe`] — the consistency probe: cached values compared with the database.
//! * [`source_watch`] — the slot's retained WAL and lag, or the Kafka consumer group's lag.

pub mod columns;
pub mod families;
pub mod keyspace_events;
pub mod probe;
pub mod retention;
pub mod samples;
pub mod source_watch;

/// Why one round of a monitoring task failed (the next round tries again).
#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    #[error("postgres: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error(transparent)]
    Cache(#[from] crate::target::CacheError),
    #[error(transparent)]
    Warm(#[from] crate::warm::WarmError),
}
