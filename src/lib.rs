//! cachewarden keeps Redis caches correct: it streams a PostgreSQL database's committed
//! changes through logical replication, maps each changed row to cache keys through rule files,
//! deletes those keys, journals every invalidation, and only then confirms the stream position.
//!
//! # Layout
//!
//! The data path, in order:
//!
//! * [`source`] — ordered change events with a resumable position: the `pgoutput` decoder
//!   ([`source::pgoutput`]), the replication protocol ([`source::replication`]) and the
//!   PostgreSQL source with publication/slot management and batching ([`source::postgres`]).
//! * [`rules`] — load, validate and check rule files; match changes; render keys
//!   ([`rules::template`], [`rules::check`]).
//! * [`plan`] — a batch of transactions becomes one deduplicated set of cache actions.
//! * [`cache`] — executes actions on Redis: pipelined `UNLINK`, `SCAN`-based patterns.
//! * [`journal`] — `cache_invalidations` lifecycle rows (`pending` → `completed` | `failed`).
//! * [`warm`] — refills keys after invalidation (`refresh`, `write-through`, bulk `warm`) with
//!   versioned compare-and-set writes that never put an older value over a newer one.
//! * [`worker`] — ties the path together and owns the acknowledgement contract: a position is
//!   confirmed only after every action before it is done and journaled.
//!
//! Around it: [`control`] (hot reload, live `cache_configs` switches, application requests),
//! [`status`] (HTTP health, readiness and status), [`config`] (`cachewarden.toml`),
//! [`cli`] (commands), [`migrate`] (schema), [`registry`] (`cache_configs` sync) and
//! [`explain`] (dry runs). Pure logic — decoding, matching, rendering, planning — does no I/O.

pub mod cache;
pub mod cli;
pub mod config;
pub mod control;
pub mod explain;
pub mod journal;
pub mod migrate;
pub mod plan;
pub mod registry;
pub mod rules;
pub mod source;
pub mod status;
pub mod warm;
pub mod worker;
