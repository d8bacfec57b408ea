//! The lease: exactly one instance per slot is active.
//!
//! Before it creates or alters anything (schema, publication, slot, journal), an instance
//! takes a PostgreSQL session advisory lock named after its slot, on a connection of its own
//! that it keeps for as long as it is active. Instances that do not get it are standbys: they
//! touch nothing, show `role: standby` in `/status`, and try again every
//! [`RETRY`]. When the active instance dies, its session ends and the lock with it: a SIGKILL
//! closes the socket at once; a lost network is noticed by the server through the session's TCP
//! keepalives (set here to a few seconds), so a standby takes over within about five seconds.
//! An active instance whose lease connection fails stops at once: it can no longer prove it is
//! the only one.

use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::Client;

use crate::runtime::Shutdown;
use crate::status::{Role, Status};

/// How often a standby tries to take the lease.
pub(crate) const RETRY: Duration = Duration::from_millis(500);

/// A held lease; dropping it releases the lock (the session ends).
pub(crate) struct Lease {
    client: Client,
}

impl Lease {
    /// Takes the lease for `slot`, waiting as a standby while another instance holds it.
    /// `None` when shutdown was asked first.
    pub(crate) async fn acquire(
        config: &crate::db::PgConfig,
        slot: &str,
        status: &Arc<Status>,
        shutdown: &mut Shutdown,
    ) -> Result<Option<Lease>, tokio_postgres::Error> {
        let client = crate::db::connect(config).await?;
        // The server notices a vanished holder within ~4 s and ends its session, freeing the
        // lock for a standby.
        client
            .batch_execute(
                "SET tcp_keepalives_idle = 2; SET tcp_keepalives_interval = 1; \
                 SET tcp_keepalives_count = 2; SET tcp_user_timeout = 4000; \
                 SET application_name = 'cachewarden lease'",
            )
            .await?;
        let mut said = false;
        loop {
            let got: bool = client
                .query_one(
                    "SELECT pg_try_advisory_lock(hashtext('cachewarden active ' || $1::text))",
                    &[&slot],
                )
                .await?
                .get(0);
            if got {
                status.set_role(Role::Active);
                if said {
                    tracing::warn!(slot, "took over: this instance is now active");
                }
                return Ok(Some(Lease { client }));
            }
            if !said {
                said = true;
                status.set_role(Role::Standby);
                tracing::info!(
                    slot,
                    "standby: another instance holds this slot; waiting to take over"
                );
            }
            tokio::select! {
                _ = tokio::time::sleep(RETRY) => {}
                _ = shutdown.recv() => return Ok(None),
            }
        }
    }

    /// Resolves when the lease is lost (its connection failed).
    pub(crate) async fn lost(&self) {
        loop {
            if self.client.is_closed() || self.client.simple_query("").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}
