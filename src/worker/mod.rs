//! The worker: start-up checks, then the `pipeline` with its helper tasks until shutdown.
//!
//! [`Worker::start`] connects to the journal's database, migrates, checks the rules against the
//! schema, syncs `cache_configs`, and opens the configured source (PostgreSQL: publication and
//! slot) and cache targets. Errors there are configuration errors. [`Worker::run`] recovers open
//! journal rows, spawns the helpers — rule control ([`crate::control`]), the cache health watch
//! (`health`), delayed passes (`delayed`), keyspace passes beside the stream (`scans`), the warmer and warm-on-start ([`crate::warm`]) —
//! and runs the pipeline, whose module documents the acknowledgement contract (`confirm` holds
//! each position until the trailing journal has written what came before it). At shutdown the
//! helpers are drained, not aborted: queued warm writes and delayed passes still run.

mod confirm;
mod delayed;
mod health;
mod lease;
mod pipeline;
mod scans;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Notify};

use crate::config::{redact_url, Config};
use crate::control::{Controller, Live};
use crate::journal::PgJournal;
use crate::plan;
use crate::rules::{check, RuleErrors, RuleSet};
use crate::runtime::{Backoff, Shutdown, TaskSet};
use crate::source::{self, Source, SourceError};
use crate::status::Status;
use crate::target::priority::Priority;
use crate::target::{CacheTarget, Targets};
use pipeline::{Followers, Pipeline};

/// How long stopping waits for the helper tasks.
const DRAIN: Duration = Duration::from_secs(10);

/// Why the worker could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("invalid postgres url: {0}")]
    Url(tokio_postgres::Error),
    #[error("postgres: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("migrations: {0}")]
    Migrate(#[from] crate::migrate::MigrateError),
    #[error("rules do not match the database:\n{0}")]
    Rules(RuleErrors),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Cache(#[from] crate::target::CacheError),
    #[error("warming: {0}")]
    Warm(#[from] crate::warm::WarmError),
    #[error(transparent)]
    Journal(crate::journal::JournalError),
    #[error("stopped before this instance became active")]
    Stopped,
    #[error("lost the slot's lease (its PostgreSQL session failed): stopped streaming")]
    LeaseLost,
}

impl WorkerError {
    /// Whether retrying later may succeed (the database is unreachable, as opposed to refusing
    /// what we asked).
    pub fn is_transient(&self) -> bool {
        match self {
            WorkerError::Postgres(e) => e.code().is_none(),
            WorkerError::Source(SourceError::Postgres(e)) => e.code().is_none(),
            WorkerError::Migrate(crate::migrate::MigrateError::Postgres(e)) => e.code().is_none(),
            WorkerError::LeaseLost => true,
            _ => false,
        }
    }
}

/// The running pipeline and what it needs to start its helpers.
pub struct Worker {
    config: Config,
    /// The columns the source keeps; reloads widen it.
    filter: source::SharedFilter,
    lease: lease::Lease,
    reload: Arc<Notify>,
    source: Box<dyn Source>,
    pipeline: Pipeline,
}

impl Worker {
    /// Connects, migrates, checks the rules against the schema, syncs `cache_configs` and
    /// opens the source and the cache targets. Errors here are configuration errors: the caller
    /// should report them and exit non-zero.
    pub async fn start(
        config: Config,
        rules: RuleSet,
        status: Arc<Status>,
        mut shutdown: Shutdown,
    ) -> Result<Worker, WorkerError> {
        let pg = config.postgres_config().map_err(WorkerError::Url)?;
        let stream = config.stream_name();
        // The workers of one Kafka consumer group all run (the group shares the partitions
        // among them): each holds a lease of its own.
        let lease_name = if config.is_kafka() {
            format!("{stream} member {}", member_id())
        } else {
            stream.clone()
        };
        // Nothing is created or altered before this instance holds the slot's lease.
        let Some(lease) = lease::Lease::acquire(&pg, &lease_name, &status, &mut shutdown).await?
        else {
            return Err(WorkerError::Stopped);
        };
        tracing::info!(postgres = %redact_url(&config.postgres.url), redis = %redact_url(&config.redis.url),
            rules = rules.len(), "starting");
        let mut client = crate::db::connect(&pg).await?;
        // Instances of one slot starting together set up one at a time (the lock ends with the
        // session when `client` is dropped below).
        client
            .execute(
                "SELECT pg_advisory_lock(hashtext('cachewarden set-up ' || $1::text))",
                &[&stream],
            )
            .await?;
        if config.postgres.auto_migrate {
            for (version, name) in crate::migrate::apply(&mut client).await? {
                tracing::info!(version, name, "applied migration");
            }
        }
        let files = crate::registry::rule_files(&config.rules_dir);
        let recorded_before = crate::registry::slot_rules(&client, &stream)
            .await
            .ok()
            .flatten();
        let ran_before = recorded_before.as_ref().is_some_and(|r| *r == files);
        let checked = crate::control::check_against_database(
            &client,
            &rules,
            &config.redis.key_prefix,
            config.is_kafka(),
        )
        .await;
        let (catalog, conservative) = match checked {
            Ok(catalog) => (catalog, Default::default()),
            // The same files ran against this database before: the schema moved, not the
            // rules. Invalidation must not stop: start, run the affected rules conservatively,
            // and report the drift until a person fixes the files.
            Err(crate::control::CheckError::Rules(e))
                if ran_before
                    && crate::rules::check_families(&rules, &config.redis.key_prefix)
                        .is_empty() =>
            {
                let catalog = renamed_aware_catalog(&client, &config, &rules).await?;
                let (drift, affected) = crate::control::schema_drift(&rules, &catalog);
                tracing::error!(rules = ?affected, "schema drift: the rules that ran here before no longer match the schema; starting with them running conservatively:\n{e}");
                status.set_schema_drift(drift);
                (catalog, affected)
            }
            Err(crate::control::CheckError::Rules(e)) => return Err(WorkerError::Rules(e)),
            Err(crate::control::CheckError::Postgres(e)) => return Err(WorkerError::Postgres(e)),
        };
        // Only tables that exist can be published, each under its current name (a rule's table
        // renamed while no worker ran keeps its identity, and its place, under the new one).
        let oids: Vec<u32> = catalog.values().map(|i| i.oid).collect();
        let current_names = check::names_by_oid(&client, &oids).await?;
        let tables: Vec<String> = if config.is_kafka() {
            // The events name their tables; the worker's database need not have them.
            rules.tables()
        } else {
            rules
                .tables()
                .into_iter()
                .filter_map(|t| {
                    let info = catalog.get(&t)?;
                    Some(current_names.get(&info.oid).cloned().unwrap_or(t))
                })
                .collect()
        };
        crate::registry::sync(&client, &rules).await?;
        let plan_cx = plan::Context {
            key_prefix: config.redis.key_prefix.clone(),
            primary_keys: check::primary_keys(&catalog),
            disabled: Default::default(),
            tables_by_oid: check::table_oids(&catalog),
            whole_families: false,
            conservative,
        };
        let resumes = source::resumes(&config, &client).await?;
        let previous = match recorded_before {
            _ if !resumes => Previous::Same,
            Some(r) if r == files => Previous::Same,
            Some(r) => match crate::registry::parse_recorded(&r) {
                Some(old) => Previous::Recorded(old),
                None => Previous::Unknown,
            },
            None => Previous::Unknown,
        };
        // Families owed an invalidation: tables this start adds to what the source watches
        // (their changes before were never delivered) and rules new since the slot's last run
        // (the cache may hold values no rule watched). Journaled now, before the publication
        // changes; executed by the recovery that starts the run, after it (`journal::owed`).
        let mut owed: Vec<(String, &str)> = Vec::new();
        if resumes {
            if let Some(watched_before) = source::watched_tables(&config, &client).await? {
                owed.extend(
                    tables
                        .iter()
                        .filter(|t| !watched_before.contains(t))
                        .map(|t| (t.clone(), crate::control::NEWLY_WATCHED)),
                );
            }
        }
        if let Previous::Recorded(old) = &previous {
            owed.extend(
                rules
                    .rules
                    .iter()
                    .filter(|r| !old.rules.iter().any(|o| o.name == r.name))
                    .map(|r| (r.table.clone(), crate::control::NEW_RULE)),
            );
        }
        owed.sort();
        owed.dedup_by(|a, b| a.0 == b.0);
        if !owed.is_empty() {
            let at = crate::control::current_lsn(&client).await?;
            let plan = plan::families(&rules, &plan_cx, &owed, at, chrono::Utc::now());
            let mut journal = PgJournal::new(pg.clone());
            crate::journal::Owed::record(&mut journal, &plan.actions, plan.marks)
                .await
                .map_err(|e| match e {
                    crate::journal::JournalError::Postgres(e) => WorkerError::Postgres(e),
                    other => WorkerError::Journal(other),
                })?;
        }
        // The source keeps only the columns the rules read (the inherited backlog's rules too).
        let mut needed = rules.needed_columns(&plan_cx.primary_keys);
        if let Previous::Recorded(old) = &previous {
            needed = needed.union(&old.needed_columns(&plan_cx.primary_keys));
        }
        let filter = source::SharedFilter::new(needed);
        let source = source::open(&config, &client, &tables, filter.clone()).await?;
        // Changes committed from here on are planned with these rules. The backlog before it
        // was committed under the rules of whoever ran the slot before (see `inherited`).
        let start_at = crate::control::current_lsn(&client).await?;
        crate::registry::swap_slot_rules(&client, &stream, &files).await?;
        crate::registry::record_slot_tables(&client, &stream, &check::table_oids(&catalog)).await?;
        status.set_thresholds(
            config.monitor.max_memory_ratio,
            config.max_lag(),
            config.max_slot_wal(),
        );
        status.set_source_kind(if config.is_kafka() {
            "kafka"
        } else {
            "postgres"
        });
        status.set_source(
            &stream,
            match &config.kafka {
                Some(k) if config.is_kafka() => k.topics.join(","),
                _ => config.postgres.publication.clone(),
            }
            .as_str(),
            tables.clone(),
            rules.len(),
        );
        status.set_progress(source.progress());
        drop(client);
        let live = inherited(previous, rules, plan_cx, start_at);
        status.set_rule_set(live.snapshot().rules);
        let wake = Arc::new(Notify::new());
        let trail = crate::journal::Trail::spawn(
            Box::new(PgJournal::new(pg.clone())),
            crate::journal::TrailLimits::from_config(&config.worker),
            status.clone(),
            wake.clone(),
        );
        // Exact keys first: the passes hold each page back while the stream's keys run.
        let priority = Arc::new(Priority::default());
        let mut stream_targets = Targets::open(&config)?;
        stream_targets.urgent_with(priority.clone());
        let mut scan_targets = Targets::open(&config)?;
        scan_targets.defer_to(priority);
        let scans = scans::Scans::spawn(
            Box::new(scan_targets),
            Box::new(PgJournal::new(pg.clone())),
            status.clone(),
            wake.clone(),
            pipeline::max_backoff(config.worker.max_backoff_ms),
        );
        let pipeline = Pipeline {
            live: Arc::new(live),
            status,
            journal: Box::new(PgJournal::new(pg)),
            targets: stream_targets,
            backoff: Backoff::new(pipeline::max_backoff(config.worker.max_backoff_ms)),
            shutdown,
            followers: Followers::default(),
            prev_first_commit: None,
            trailing: confirm::Confirmations::new(trail, scans, wake),
        };
        Ok(Worker {
            config,
            filter,
            lease,
            reload: Arc::new(Notify::new()),
            source,
            pipeline,
        })
    }

    /// Uses `reload` (shared with a signal handler that outlives this worker) to reload.
    pub fn set_reload_handle(&mut self, reload: Arc<Notify>) {
        self.reload = reload;
    }

    /// Notifying this reloads the rules (what SIGHUP does).
    pub fn reload_handle(&self) -> Arc<Notify> {
        self.reload.clone()
    }

    /// Runs until shutdown: recovers open journal rows, then streams, reconnecting on errors;
    /// then drains the helper tasks.
    pub async fn run(self) -> Result<(), WorkerError> {
        let Worker {
            config,
            filter,
            lease,
            reload,
            mut source,
            mut pipeline,
        } = self;
        // Everything below stops on the caller's shutdown or when the lease is lost.
        let stop = Arc::new(crate::runtime::ShutdownSender::new());
        let mut outer = pipeline.shutdown.clone();
        pipeline.shutdown = stop.subscribe();
        let forward = tokio::spawn({
            let stop = stop.clone();
            async move {
                outer.recv().await;
                stop.trigger();
            }
        });
        pipeline.recover().await;
        let (live, status, shutdown) = (
            pipeline.live.clone(),
            pipeline.status.clone(),
            pipeline.shutdown.clone(),
        );
        let pg = config.postgres_config().map_err(WorkerError::Url)?;
        let mut tasks = TaskSet::new();
        tasks.spawn(
            "control",
            Controller {
                config: config.clone(),
                live: live.clone(),
                status: status.clone(),
                reload,
                shutdown: shutdown.clone(),
                filter,
            }
            .run(),
        );
        tasks.spawn(
            "health",
            health::watch(
                Targets::open(&config)?,
                config.redis.key_prefix.clone(),
                status.clone(),
                shutdown.clone(),
            ),
        );
        tasks.spawn(
            "consistency probe",
            crate::monitor::probe::run(
                config.clone(),
                live.clone(),
                Targets::open(&config)?,
                status.clone(),
                shutdown.clone(),
            ),
        );
        tasks.spawn(
            "source watch",
            crate::monitor::source_watch::run(config.clone(), status.clone(), shutdown.clone()),
        );
        let events = crate::monitor::keyspace_events::SharedTally::default();
        tasks.spawn(
            "keyspace notifications",
            crate::monitor::keyspace_events::run(
                config.clone(),
                live.clone(),
                events.clone(),
                shutdown.clone(),
            ),
        );
        tasks.spawn(
            "cache_metrics",
            crate::monitor::samples::run(
                config.clone(),
                live.clone(),
                Targets::open(&config)?,
                status.clone(),
                events,
                shutdown.clone(),
            ),
        );
        tasks.spawn(
            "retention",
            crate::monitor::retention::run(config.clone(), shutdown.clone()),
        );
        let (warm_tx, warmer) =
            crate::warm::Warmer::new(config.clone(), live.clone(), status.clone())?;
        let (delayed_tx, delayed_rx) = mpsc::channel(1024);
        let delayed = delayed::DelayedRunner {
            journal: PgJournal::new(pg),
            cache: Targets::open(&config)?,
            live: live.clone(),
            status: status.clone(),
            warm_tx: warm_tx.clone(),
        };
        tasks.spawn("delayed passes", delayed.run(delayed_rx));
        tasks.spawn(
            "warm on start",
            crate::warm::on_start(config.clone(), live.clone(), shutdown.clone()),
        );
        pipeline.followers = Followers {
            warm: Some(warm_tx),
            delayed: Some(delayed_tx),
        };
        // The warmer stops once every sender (the pipeline's, the delayed passes') is gone.
        tasks.spawn("warmer", warmer);
        // A stop request reaches the pipeline through its shutdown (it finishes its batch); a
        // lost lease stops it where it stands.
        let lost = tokio::select! {
            _ = pipeline.run(source.as_mut()) => false,
            _ = lease.lost() => true,
        };
        forward.abort();
        if lost {
            tracing::error!("lost the slot's lease: stopping at once (unconfirmed changes are replayed by whoever takes over)");
            status.set_role(crate::status::Role::Starting);
            status
                .source_connected
                .store(false, std::sync::atomic::Ordering::Relaxed);
        }
        stop.trigger();
        // Closing the channels lets the delayed passes run what is queued and the warmer
        // finish its queue; the others watch `shutdown`.
        pipeline.followers = Followers::default();
        drop(pipeline);
        tasks.drain(DRAIN).await;
        drop(lease);
        if lost {
            return Err(WorkerError::LeaseLost);
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// The rules a slot's backlog was committed under, as far as a new start can know.
enum Previous {
    /// Ours (or there is no backlog: the slot is new).
    Same,
    /// Other rules, recorded in `cachewarden_slots` by the instance that ran the slot.
    Recorded(RuleSet),
    /// Nothing recorded (a slot from before the record existed), or the recorded files no
    /// longer parse.
    Unknown,
}

/// The rule epochs a start begins with. A slot that resumes a backlog inherits changes
/// committed under the rules of the instance that ran it before: when those differ from ours
/// the backlog is planned with them; when they cannot be known (none recorded, or they no
/// longer parse), every inherited change invalidates its table's whole key families.
/// Changes committed from `start_at` on use `rules`.
fn inherited(
    previous: Previous,
    rules: RuleSet,
    cx: plan::Context,
    start_at: crate::source::Lsn,
) -> Live {
    let recorded = match previous {
        Previous::Same => return Live::new(rules, cx),
        Previous::Recorded(old) => Some(old),
        Previous::Unknown => None,
    };
    let before = match recorded {
        Some(old) => {
            tracing::info!(from = %start_at, "the rules changed since this slot's last run: its backlog is planned with the rules recorded then");
            crate::control::Snapshot {
                rules: Arc::new(old),
                cx: Arc::new(cx.clone()),
            }
        }
        None => {
            tracing::warn!(from = %start_at, "the rules this slot ran before are unknown: its backlog invalidates whole key families");
            crate::control::Snapshot {
                rules: Arc::new(rules.clone()),
                cx: Arc::new(plan::Context {
                    whole_families: true,
                    ..cx.clone()
                }),
            }
        }
    };
    let live = Live::new(RuleSet::default(), plan::Context::default());
    live.replace(|_| before);
    live.install(
        start_at,
        crate::control::Snapshot {
            rules: Arc::new(rules),
            cx: Arc::new(cx),
        },
    );
    live
}

/// The catalog of the rules' tables, keyed by the names the rules use, also for a table renamed
/// while no worker ran: found by the identity recorded for the slot (`cachewarden_slots`).
async fn renamed_aware_catalog(
    client: &tokio_postgres::Client,
    config: &Config,
    rules: &RuleSet,
) -> Result<std::collections::HashMap<String, check::TableInfo>, WorkerError> {
    let mut catalog = check::load_catalog(client, &rules.tables()).await?;
    let recorded = crate::registry::slot_tables(client, &config.stream_name())
        .await
        .unwrap_or_default();
    let missing: Vec<(String, u32)> = rules
        .tables()
        .into_iter()
        .filter(|t| !catalog.contains_key(t))
        .filter_map(|t| recorded.get(&t).map(|oid| (t, *oid)))
        .collect();
    if missing.is_empty() {
        return Ok(catalog);
    }
    let oids: Vec<u32> = missing.iter().map(|(_, o)| *o).collect();
    let now = check::names_by_oid(client, &oids).await?;
    let names: Vec<String> = now.values().cloned().collect();
    let found = check::load_catalog(client, &names).await?;
    for (t, oid) in missing {
        if let Some(info) = now.get(&oid).and_then(|n| found.get(n)) {
            tracing::warn!(table = %t, now = ?now.get(&oid), "a rule's table was renamed while no worker ran: matching it by identity");
            catalog.insert(t, info.clone());
        }
    }
    Ok(catalog)
}

/// Tells this process apart from the other members of its Kafka consumer group.
fn member_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!(
        "{}:{}:{}",
        host.trim(),
        std::process::id(),
        chrono::Utc::now().timestamp_micros()
    )
}
