//! cachewarden keeps Redis caches correct: it reads a database's committed changes, maps each
//! changed row to cache keys through rule files, deletes or refreshes those keys, journals every
//! invalidation, and only then confirms the stream position.
//!
//! # Layout
//!
//! The data path, in the order a change meets it:
//!
//! * [`source`] — the [`source::Source`] trait: ordered batches of committed changes and a
//!   position to confirm. [`source::postgres`] is logical replication with `pgoutput`
//!   (decoder, replication protocol, publication and slot set-up); [`source::kafka`] is
//!   Debezium change events read by a Kafka consumer group (decoder, offsets per partition).
//! * [`rules`] — load, validate and check rule files; match changes; render keys.
//! * `plan` — a batch of transactions becomes one deduplicated set of [`action`]s (the shared
//!   vocabulary: [`action::Target`], [`action::Action`], [`action::WarmJob`]), with the fence
//!   marks of [`fence`], the never-stale protocol and its [`fence::Version`]s.
//! * [`target`] — the [`target::CacheTarget`] trait and its Redis implementation: executes
//!   actions, versioned writes, health and figures.
//! * [`journal`] — `cache_invalidations`, and the one invalidation lifecycle every path uses
//!   (`pending` → execute → `completed` | `failed`; for the stream: execute, then rows written
//!   once, final, by the trailing writer in grouped commits).
//! * [`worker`] — ties the path together and owns the acknowledgement contract: a position is
//!   confirmed only after every action before it is done and journaled (pipelined: the
//!   journal and the patterns' keyspace passes run behind and beside the stream).
//! * [`warm`] — refills keys after invalidation (`refresh`, `write-through`, bulk `warm`).
//!
//! Around it: [`control`] (hot reload, `cache_configs` switches, application requests),
//! [`status`] (the shared state, readiness), [`api`] (HTTP: health, readiness, status,
//! metrics, the operator API `/api/v1` and the web console), [`metrics`] (Prometheus `/metrics`),
//! [`monitor`] (`cache_metrics` rows, the consistency probe, the source's figures, keyspace
//! notifications, retention), [`advice`] (the optimization advisor: figures → suggestions),
//! [`config`] (`cachewarden.toml`), [`cli`] (commands),
//! [`migrate`] (schema), `registry` (`cache_configs` sync), [`explain`] (dry runs),
//! [`runtime`] (shutdown, task sets, backoff), [`db`] (connections), [`catalog`] (the rule
//! tables' shape), [`tls`] (libpq's `sslmode` on rustls) and
//! `failpoints` (named crash points for the fault-injection tests). Pure logic — decoding,
//! matching, rendering, planning, fencing, journal grouping, globs, SQL quoting — does no I/O.

pub mod action;
pub mod advice;
pub mod api;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod control;
pub mod db;
mod encode;
pub mod explain;
mod failpoints;
pub mod fence;
pub mod glob;
pub mod journal;
pub mod metrics;
pub mod migrate;
pub mod monitor;
mod plan;
mod registry;
pub mod rules;
pub mod runtime;
pub mod source;
mod span;
mod sql;
pub mod status;
pub mod target;
pub mod tls;
mod version;
pub mod warm;
pub mod worker;
