//! Monitoring beside the data path: what keeps the product's own tables bounded and, as they
//! grow, the figures operators watch. Nothing here is on the hot path; every task runs on a
//! connection of its own and gives way to shutdown.
//!
//! * [`retention`] — deletes expired `cache_invalidations` and `cache_metrics` rows in small
//!   batches.
//! * [`families`] — per-rule key families and the estimates a keyspace sample gives (pure).
//! * [`samples`] — every `[monitor] interval`, the `cache_metrics` rows: a whole-instance row of
//!   per-interval deltas and a row per active rule.
//! * [`source_watch`] — the slot's retained WAL and lag, or the Kafka consumer group's lag.

pub mod families;
pub mod retention;
pub mod samples;
pub mod source_watch;
