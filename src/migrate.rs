//! Versioned schema migrations for cachewarden's own tables.
//!
//! The SQL lives in `migrations/NNNN_name.sql` and is compiled into the binary, so a deployed
//! worker never depends on files beside it. [`apply`] runs each pending migration in its own
//! transaction under an advisory lock (two workers starting together cannot race), records it
//! in `cachewarden_migrations` with a checksum, and refuses to continue if an applied migration's
//! text has since changed.

use tokio_postgres::Client;

/// One embedded migration.
pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// Every migration, in order.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "init",
        sql: include_str!("../migrations/0001_init.sql"),
    },
    Migration {
        version: 2,
        name: "tags_bumps_requests",
        sql: include_str!("../migrations/0002_tags_bumps_requests.sql"),
    },
    Migration {
        version: 3,
        name: "warm_runs",
        sql: include_str!("../migrations/0003_warm_runs.sql"),
    },
    Migration {
        version: 4,
        name: "dead_letters",
        sql: include_str!("../migrations/0004_dead_letters.sql"),
    },
    Migration {
        version: 5,
        name: "slots",
        sql: include_str!("../migrations/0005_slots.sql"),
    },
    Migration {
        version: 6,
        name: "scheduled_passes",
        sql: include_str!("../migrations/0006_scheduled_passes.sql"),
    },
    Migration {
        version: 7,
        name: "slot_tables",
        sql: include_str!("../migrations/0007_slot_tables.sql"),
    },
    Migration {
        version: 8,
        name: "open_work_queue",
        sql: include_str!("../migrations/0008_open_work_queue.sql"),
    },
    Migration {
        version: 9,
        name: "kafka_dead_letters",
        sql: include_str!("../migrations/0009_kafka_dead_letters.sql"),
    },
    Migration {
        version: 10,
        name: "metrics_per_rule",
        sql: include_str!("../migrations/0010_metrics_per_rule.sql"),
    },
    Migration {
        version: 11,
        name: "config_changes",
        sql: include_str!("../migrations/0011_config_changes.sql"),
    },
];

/// Errors applying migrations.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("postgres: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("migration {version} ({name}) was changed after it was applied (checksum {applied} in the database, {now} now); add a new migration instead")]
    Edited {
        version: i32,
        name: &'static str,
        applied: String,
        now: String,
    },
}

/// FNV-1a, enough to notice an edited migration.
fn checksum(sql: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in sql.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

const LOCK_KEY: i64 = 0x6361_6368_6577_6172; // "cachewar"

/// Applies pending migrations; returns the versions applied now (empty when up to date).
pub async fn apply(client: &mut Client) -> Result<Vec<(i32, &'static str)>, MigrateError> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS cachewarden_migrations (
                 version integer PRIMARY KEY,
                 name text NOT NULL,
                 checksum text NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .await
        .or_else(|e| {
            // Two processes creating the table at once: the loser sees a unique violation.
            if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) {
                Ok(())
            } else {
                Err(e)
            }
        })?;
    let mut applied_now = Vec::new();
    for m in MIGRATIONS {
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY])
            .await?;
        let row = tx
            .query_opt(
                "SELECT checksum FROM cachewarden_migrations WHERE version = $1",
                &[&m.version],
            )
            .await?;
        let sum = checksum(m.sql);
        match row {
            Some(row) => {
                let applied: String = row.get(0);
                if applied != sum {
                    return Err(MigrateError::Edited {
                        version: m.version,
                        name: m.name,
                        applied,
                        now: sum,
                    });
                }
            }
            None => {
                tx.batch_execute(m.sql).await?;
                tx.execute(
                    "INSERT INTO cachewarden_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    &[&m.version, &m.name, &sum],
                )
                .await?;
                applied_now.push((m.version, m.name));
            }
        }
        tx.commit().await?;
    }
    Ok(applied_now)
}
