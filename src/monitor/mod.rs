//! Monitoring beside the data path: what keeps the product's own tables bounded and, as they
//! grow, the figures operators watch. Nothing here is on the hot path; every task runs on a
//! connection of its own and gives way to shutdown.
//!
//! * [`retention`] — deletes expired `cache_invalidations` and `cache_metrics` rows in small
//!   batches.

pub mod retention;
