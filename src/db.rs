//! Regular (non-replication) PostgreSQL connections for the journal, the registry, the
//! controller and warming: a connect timeout, TCP keepalives (a half-open connection is noticed
//! within about half a minute) and `application_name = cachewarden`, driven in the background.

use std::time::Duration;

use tokio_postgres::{Client, Config, NoTls};

/// Opens a regular (non-replication) connection and drives it in the background.
pub async fn connect(config: &Config) -> Result<Client, tokio_postgres::Error> {
    let mut config = config.clone();
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(10));
    }
    config.application_name("cachewarden");
    // Notice a dead peer (a half-open connection) within about half a minute.
    config.keepalives(true);
    config.keepalives_idle(Duration::from_secs(10));
    config.keepalives_interval(Duration::from_secs(5));
    config.keepalives_retries(3);
    let (client, conn) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::warn!(error = %e, "postgres connection closed");
        }
    });
    Ok(client)
}
