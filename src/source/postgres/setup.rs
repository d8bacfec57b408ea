//! PostgreSQL-only set-up before streaming: `wal_level` must be `logical`, the publication must
//! name exactly the tables the rules watch (never cachewarden's own tables, and changes to
//! partitions published under the partitioned table the rules name), and the logical slot must
//! exist as a `pgoutput` slot of this database.

use crate::source::{Lsn, SourceError};
use crate::sql::{quote_ident, quote_table};

/// Makes sure `wal_level` is logical, the publication covers exactly `tables`, and the slot
/// exists. Returns the slot's confirmed position. Safe to run from several instances at once.
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
    // Another instance may be doing the same at this very moment: "already exists" from a
    // create means it won the race, so take what it created.
    let p = quote_ident(publication);
    let alter = format!(
        "ALTER PUBLICATION {p} SET TABLE {list}; ALTER PUBLICATION {p} SET (publish_via_partition_root = true)"
    );
    let exists = client
        .query_opt(
            "SELECT 1 FROM pg_publication WHERE pubname = $1",
            &[&publication],
        )
        .await?
        .is_some();
    if exists {
        // Only when it differs: an administrator may keep the publication, and a worker
        // role that does not own the tables then never needs to change it.
        if !publication_matches(client, publication, tables).await? {
            client.batch_execute(&alter).await?;
        }
    } else {
        // Changes to partitions are published under the partitioned table the rules name.
        let create = format!(
            "CREATE PUBLICATION {p} FOR TABLE {list} WITH (publish_via_partition_root = true)"
        );
        match client.batch_execute(&create).await {
            Ok(()) => {}
            Err(e) if is_duplicate(&e) => client.batch_execute(&alter).await?,
            Err(e) => return Err(e.into()),
        }
    }
    // Only the holder of the slot's lease gets here: a walsender still streaming this slot
    // belongs to an instance that lost the lease (a partitioned host whose session the server
    // has not dropped yet, for up to wal_sender_timeout). End it, or taking over would wait.
    let ended = client
        .query(
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots \
             WHERE slot_name = $1 AND active_pid IS NOT NULL",
            &[&slot],
        )
        .await?;
    if !ended.is_empty() {
        tracing::warn!(
            slot,
            "ended the replication connection of an instance that lost the lease"
        );
    }
    let confirmed = match slot_position(client, slot).await? {
        Some(lsn) => lsn,
        None => {
            let created = client
                .query_one(
                    "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')",
                    &[&slot],
                )
                .await;
            match created {
                Ok(row) => {
                    let lsn: String = row.get(0);
                    tracing::info!(slot, lsn, "created replication slot");
                    lsn.parse().unwrap_or_default()
                }
                Err(e) if is_duplicate(&e) => slot_position(client, slot)
                    .await?
                    .ok_or_else(|| SourceError::Postgres(e))?,
                Err(e) => return Err(e.into()),
            }
        }
    };
    Ok(confirmed)
}

/// Whether an error says the object was created meanwhile (by another instance).
/// Whether `publication` publishes exactly `tables` (`schema.table`), via the partition root.
async fn publication_matches(
    client: &tokio_postgres::Client,
    publication: &str,
    tables: &[String],
) -> Result<bool, SourceError> {
    let row = client
        .query_one(
            "SELECT p.pubviaroot, \
                    ARRAY(SELECT t.schemaname || '.' || t.tablename FROM pg_publication_tables t \
                          WHERE t.pubname = p.pubname ORDER BY 1), \
                    p.puballtables \
             FROM pg_publication p WHERE p.pubname = $1",
            &[&publication],
        )
        .await?;
    let (via_root, published, all): (bool, Vec<String>, bool) =
        (row.get(0), row.get(1), row.get(2));
    let mut wanted: Vec<String> = tables.to_vec();
    wanted.sort();
    wanted.dedup();
    Ok(via_root && !all && published == wanted)
}

fn is_duplicate(e: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    e.code()
        .is_some_and(|c| *c == SqlState::DUPLICATE_OBJECT || *c == SqlState::UNIQUE_VIOLATION)
}

/// The slot's confirmed position, if the slot exists; an error if it exists but is not a
/// `pgoutput` slot of this database.
async fn slot_position(
    client: &tokio_postgres::Client,
    slot: &str,
) -> Result<Option<Lsn>, SourceError> {
    let Some(row) = client
        .query_opt(
            "SELECT s.plugin, d.datname = current_database(), s.confirmed_flush_lsn::text \
             FROM pg_replication_slots s LEFT JOIN pg_database d ON d.oid = s.datoid \
             WHERE s.slot_name = $1",
            &[&slot],
        )
        .await?
    else {
        return Ok(None);
    };
    let plugin: Option<String> = row.get(0);
    let same_db: Option<bool> = row.get(1);
    if plugin.as_deref() != Some("pgoutput") || same_db != Some(true) {
        return Err(SourceError::SlotMismatch {
            slot: slot.to_string(),
            plugin,
        });
    }
    let lsn: Option<String> = row.get(2);
    Ok(Some(lsn.and_then(|l| l.parse().ok()).unwrap_or_default()))
}
