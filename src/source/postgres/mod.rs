//! The PostgreSQL source: logical replication with `pgoutput` from one slot.
//!
//! [`PostgresSource::prepare`] does the PostgreSQL-only start-up (`wal_level`, publication,
//! slot; `setup`) and learns the slot's confirmed position. The [`Source`] implementation then
//! opens replication connections (`stream`) on demand and resumes each at the slot, so a
//! reconnect after any failure replays exactly what was not confirmed.
//!
//! * [`pgoutput`] — pure decoding of `pgoutput` messages and assembly into transactions.
//! * [`replication`] — the replication sub-protocol over a socket.
//! * `setup` — publication and slot management.
//! * `stream` — one live connection cut into batches.

pub mod pgoutput;
pub mod replication;
mod setup;
mod stream;

use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;

pub use pgoutput::SequenceError;
pub use replication::ReplError;
pub(crate) use setup::prepare;

use super::{Batch, BatchLimits, Lsn, Position, Progress, SharedFilter, Source, SourceError};
use crate::runtime::Shutdown;
use stream::ReplicationStream;

/// Logical replication from one slot of one database.
pub struct PostgresSource {
    config: crate::db::PgConfig,
    slot: String,
    publication: String,
    limits: BatchLimits,
    /// The slot's confirmed position, as far as this process knows.
    confirmed: Lsn,
    server_wal_end: Lsn,
    stream: Option<ReplicationStream>,
    filter: SharedFilter,
}

impl PostgresSource {
    /// Prepares the publication (exactly `tables`) and the slot on `client`'s database; the
    /// returned source resumes at the slot's confirmed position.
    pub async fn prepare(
        client: &tokio_postgres::Client,
        config: crate::db::PgConfig,
        slot: &str,
        publication: &str,
        tables: &[String],
        limits: BatchLimits,
        filter: SharedFilter,
    ) -> Result<Self, SourceError> {
        let confirmed = setup::prepare(client, slot, publication, tables).await?;
        Ok(PostgresSource {
            config,
            slot: slot.to_string(),
            publication: publication.to_string(),
            limits,
            confirmed,
            server_wal_end: confirmed,
            stream: None,
            filter,
        })
    }

    fn stream(&mut self) -> Result<&mut ReplicationStream, SourceError> {
        self.stream.as_mut().ok_or(SourceError::NotConnected)
    }

    fn remember(&mut self) {
        if let Some(s) = &self.stream {
            self.confirmed = self.confirmed.max(s.confirmed());
            self.server_wal_end = self.server_wal_end.max(s.server_wal_end());
        }
    }
}

impl Source for PostgresSource {
    fn connect(&mut self) -> BoxFuture<'_, Result<(), SourceError>> {
        async move {
            if let Some(old) = self.stream.take() {
                old.close().await;
            }
            let stream = ReplicationStream::start(
                &self.config,
                &self.slot,
                &self.publication,
                self.confirmed,
                self.limits.clone(),
                self.filter.clone(),
            )
            .await?;
            tracing::info!(slot = %self.slot, from = %self.confirmed, "replication started");
            self.stream = Some(stream);
            Ok(())
        }
        .boxed()
    }

    fn next_batch<'a>(
        &'a mut self,
        shutdown: &'a mut Shutdown,
        wake: &'a tokio::sync::Notify,
    ) -> BoxFuture<'a, Result<Batch, SourceError>> {
        async move {
            let r = self.stream()?.next_batch(shutdown, wake).await;
            self.remember();
            if r.is_err() {
                // The connection is unusable after an error: the next connect starts afresh.
                self.stream = None;
            }
            r
        }
        .boxed()
    }

    fn confirm(&mut self, position: Position) -> BoxFuture<'_, Result<(), SourceError>> {
        async move {
            let Position::Lsn(lsn) = position else {
                return Err(SourceError::Lost(format!("not a WAL position: {position}")));
            };
            let r = self.stream()?.confirm(lsn).await;
            self.remember();
            r
        }
        .boxed()
    }

    fn heartbeat(&mut self) -> BoxFuture<'_, Result<(), SourceError>> {
        async move { self.stream()?.heartbeat().await }.boxed()
    }

    fn close(&mut self) -> BoxFuture<'_, ()> {
        async move {
            self.remember();
            if let Some(s) = self.stream.take() {
                s.close().await;
            }
        }
        .boxed()
    }

    fn progress(&self) -> Progress {
        let (confirmed, head) = match &self.stream {
            Some(s) => (
                self.confirmed.max(s.confirmed()),
                self.server_wal_end.max(s.server_wal_end()),
            ),
            None => (self.confirmed, self.server_wal_end),
        };
        Progress {
            confirmed: confirmed.to_string(),
            head: head.to_string(),
            lag: head.0.saturating_sub(confirmed.0),
        }
    }

    fn heartbeat_interval(&self) -> Duration {
        self.limits.status_interval
    }
}
