//! Regular (non-replication) PostgreSQL connections for the journal, the registry, the
//! controller and warming: a connect timeout, TCP keepalives (a half-open connection is noticed
//! within about half a minute), `application_name = cachewarden` and TLS as the URL's
//! `sslmode` asks ([`crate::tls`]), driven in the background.

use std::time::Duration;

use tokio_postgres::{Client, NoTls};

use crate::tls::PgTls;

/// A PostgreSQL URL, parsed: tokio-postgres' settings and the TLS side, which the replication
/// connection uses too. Derefs to the tokio-postgres settings.
#[derive(Debug, Clone)]
pub struct PgConfig {
    pub pg: tokio_postgres::Config,
    pub tls: PgTls,
}

impl std::ops::Deref for PgConfig {
    type Target = tokio_postgres::Config;
    fn deref(&self) -> &Self::Target {
        &self.pg
    }
}

impl std::ops::DerefMut for PgConfig {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.pg
    }
}

/// Opens a regular (non-replication) connection and drives it in the background.
pub async fn connect(config: &PgConfig) -> Result<Client, tokio_postgres::Error> {
    let mut pg = config.pg.clone();
    if pg.get_connect_timeout().is_none() {
        pg.connect_timeout(Duration::from_secs(10));
    }
    pg.application_name("cachewarden");
    // Notice a dead peer (a half-open connection) within about half a minute.
    pg.keepalives(true);
    pg.keepalives_idle(Duration::from_secs(10));
    pg.keepalives_interval(Duration::from_secs(5));
    pg.keepalives_retries(3);
    let client = match &config.tls.config {
        None => {
            let (client, conn) = pg.connect(NoTls).await?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::warn!(error = %e, "postgres connection closed");
                }
            });
            client
        }
        Some(tls) => {
            let tls = tokio_postgres_rustls::MakeRustlsConnect::new((**tls).clone());
            let (client, conn) = pg.connect(tls).await?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::warn!(error = %e, "postgres connection closed");
                }
            });
            client
        }
    };
    Ok(client)
}
