//! The source's figures beyond its position, read every [`EVERY`] on a connection of its own:
//! for PostgreSQL, the WAL the replication slot retains (`cachewarden_slot_retained_wal_bytes`,
//! a readiness condition past `[monitor] max_slot_wal`: a slot that retains without bound fills
//! the database server's disk) and the WAL written since its confirmed position
//! (`cachewarden_source_lag_bytes`); for Kafka, the consumer group's lag per partition.

use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::Client;

use crate::config::Config;
use crate::runtime::Shutdown;
use crate::status::{SourceFigures, Status};

/// How often the figures are read.
pub const EVERY: Duration = Duration::from_secs(5);

/// Runs until shutdown.
pub async fn run(config: Config, status: Arc<Status>, mut shutdown: Shutdown) {
    let mut db: Option<Client> = None;
    loop {
        let figures = match &config.kafka {
            Some(k) if config.is_kafka() => {
                match crate::source::kafka::consumer_lag(k, Duration::from_secs(5)).await {
                    Ok(lag) => Some(SourceFigures {
                        consumer_lag: Some(lag),
                        ..SourceFigures::default()
                    }),
                    Err(e) => {
                        tracing::debug!(error = %e, "reading the consumer group's lag failed");
                        None
                    }
                }
            }
            _ => match slot_figures(&config, &mut db).await {
                Ok(f) => Some(f),
                Err(e) => {
                    tracing::debug!(error = %e, "reading the replication slot's figures failed");
                    db = None;
                    None
                }
            },
        };
        if let Some(f) = figures {
            status.set_source_figures(f);
        }
        tokio::select! {
            _ = tokio::time::sleep(EVERY) => {}
            _ = shutdown.recv() => return,
        }
    }
}

/// The slot's retained WAL and lag, from `pg_replication_slots`.
async fn slot_figures(
    config: &Config,
    db: &mut Option<Client>,
) -> Result<SourceFigures, tokio_postgres::Error> {
    if db.as_ref().is_none_or(|c| c.is_closed()) {
        *db = Some(crate::db::connect(&config.postgres_config()?).await?);
    }
    let Some(client) = db.as_ref() else {
        return Ok(SourceFigures::default());
    };
    let row = client
        .query_opt(
            "SELECT (pg_current_wal_lsn() - restart_lsn)::int8, \
                    (pg_current_wal_lsn() - confirmed_flush_lsn)::int8 \
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&config.postgres.slot],
        )
        .await?;
    let bytes = |v: Option<i64>| v.map(|b| u64::try_from(b).unwrap_or(0));
    Ok(match row {
        Some(r) => SourceFigures {
            slot_retained_wal_bytes: bytes(r.get(0)),
            source_lag_bytes: bytes(r.get(1)),
            consumer_lag: None,
        },
        None => SourceFigures::default(),
    })
}
