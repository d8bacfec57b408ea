//! Warming: fill keys after their invalidation without ever writing a stale value.
//!
//! Why a warm write can never land over a newer invalidation is the fence protocol's argument,
//! written once in [`crate::fence`]; this module fills keys under it:
//!
//! * `warmer` — the worker's background warmer for `refresh`/`write-through` rules, fed
//!   after each batch is journaled; it waits until the triggering transaction is visible
//!   before a refresh reads, so a value versioned `V` never predates `V`.
//! * `bulk` and `resume` — `cachewarden warm` and `warm_on_start`: every key of a rule,
//!   resumable.
//! * `bulk_sql` — the SQL bulk warming reads with (pure).
//! * `expected` — what one key should hold now (for the consistency probe).
//! * `values` — text-format arguments and raw results.

mod bulk;
mod bulk_sql;
mod expected;
mod resume;
mod values;
mod warmer;

use std::sync::Arc;
use std::time::{Duration, Instant};

pub use bulk::{bulk_warm, Progress};
pub use expected::{expected_value, Expected};
pub use resume::resumable_warm;
pub use values::{RawValue, TextArg};
pub use warmer::{wait_visible, Warmer, QUEUE};

use crate::config::Config;
use crate::control::Live;
use crate::runtime::Shutdown;
use crate::target::Targets;

/// Why a warm did not complete. The keys concerned simply stay invalidated.
#[derive(Debug, thiserror::Error)]
pub enum WarmError {
    #[error("postgres: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error(transparent)]
    Cache(#[from] crate::target::CacheError),
    #[error("the changed rows did not become visible within 5 s")]
    NotVisible,
    #[error("no database connection")]
    NotConnected,
    #[error("the rule has no [rule.warm]")]
    NotWarm,
    #[error("table {0} does not exist")]
    NoTable(String),
    #[error("the server returned an invalid WAL position {0:?}")]
    BadPosition(String),
}

/// Bulk-warms the rules marked `warm_on_start`, beside the stream. Stops between rules when
/// shutdown is asked, and mid-rule at its next await (the run resumes at the next start).
pub async fn on_start(config: Config, live: Arc<Live>, mut shutdown: Shutdown) {
    let snap = live.snapshot();
    let rules: Vec<_> = snap
        .rules
        .rules
        .iter()
        .filter(|r| r.warm_on_start)
        .collect();
    if rules.is_empty() {
        return;
    }
    let Ok(pg) = config.postgres_config() else {
        return;
    };
    let (client, mut cache) = match (crate::db::connect(&pg).await, Targets::open(&config)) {
        (Ok(c), Ok(r)) => (c, r),
        _ => {
            tracing::warn!("warm_on_start skipped: cannot connect");
            return;
        }
    };
    for rule in rules {
        if shutdown.is_shutdown() {
            return;
        }
        let mut last = Instant::now();
        let run = resumable_warm(
            &client,
            &mut cache,
            rule,
            &snap.cx.key_prefix,
            None,
            false,
            |p| {
                if last.elapsed() > Duration::from_secs(5) {
                    last = Instant::now();
                    tracing::info!(rule = %rule.name, done = p.done, total = p.total, "warming on start");
                }
            },
        );
        let r = tokio::select! {
            r = run => r,
            _ = shutdown.recv() => {
                tracing::info!(rule = %rule.name, "warming on start stopped; it resumes at the next start");
                return;
            }
        };
        match r {
            Ok(p) => {
                tracing::info!(rule = %rule.name, written = p.written, seconds = p.elapsed.as_secs_f64(), "warmed on start")
            }
            Err(e) => tracing::warn!(rule = %rule.name, error = %e, "warm_on_start failed"),
        }
    }
}
