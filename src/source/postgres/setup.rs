//! PostgreSQL-only set-up before streaming: `wal_level` must be `logical`, the publication must
//! name exactly the tables the rules watch (never cachewarden's own tables, and changes to
//! partitions published under the partitioned table the rules name), and the logical slot must
//! exist as a `pgoutput` slot of this database.

use crate::source::{Lsn, SourceError};
use crate::sql::{quote_ident, quote_table};

/// Makes sure `wal_level` is logical, the publication covers exactly `tables`, and the slot
/// exists. Returns the slot's confirmed position.
pub(crate) async fn prepare(
    client: &tokio_postgres::Client,
    slot: &str,
    publication: &str,
    tables: &[String],
) -> Result<Lsn, SourceError> {
    let wal_level: String = client.query_one("SHOW wal_level", &[]).await?.get(0);
    if wal_level != "logical" {
        return Err(SourceError::WalLevel(wal_level));
    }
    if tables.is_empty() {
        return Err(SourceError::NoTables);
    }
    let list = tables
        .iter()
        .map(|t| quote_table(t))
        .collect::<Vec<_>>()
        .join(", ");
    let exists = client
        .query_opt(
            "SELECT 1 FROM pg_publication WHERE pubname = $1",
            &[&publication],
        )
        .await?
        .is_some();
    // Changes to partitions are published under the partitioned table the rules name.
    let verb = if exists {
        format!(
            "ALTER PUBLICATION {p} SET TABLE {list}; ALTER PUBLICATION {p} SET (publish_via_partition_root = true)",
            p = quote_ident(publication)
        )
    } else {
        format!(
            "CREATE PUBLICATION {} FOR TABLE {list} WITH (publish_via_partition_root = true)",
            quote_ident(publication)
        )
    };
    client.batch_execute(&verb).await?;
    let row = client
        .query_opt(
            "SELECT s.plugin, d.datname = current_database(), s.confirmed_flush_lsn::text \
             FROM pg_replication_slots s LEFT JOIN pg_database d ON d.oid = s.datoid \
             WHERE s.slot_name = $1",
            &[&slot],
        )
        .await?;
    let confirmed = match row {
        Some(row) => {
            let plugin: Option<String> = row.get(0);
            let same_db: Option<bool> = row.get(1);
            if plugin.as_deref() != Some("pgoutput") || same_db != Some(true) {
                return Err(SourceError::SlotMismatch {
                    slot: slot.to_string(),
                    plugin,
                });
            }
            let lsn: Option<String> = row.get(2);
            lsn.and_then(|l| l.parse().ok()).unwrap_or_default()
        }
        None => {
            let row = client
                .query_one(
                    "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')",
                    &[&slot],
                )
                .await?;
            let lsn: String = row.get(0);
            tracing::info!(slot, lsn, "created replication slot");
            lsn.parse().unwrap_or_default()
        }
    };
    Ok(confirmed)
}
