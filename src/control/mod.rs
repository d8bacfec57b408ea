//! Live control of a running worker: rule reloads, rule switches and invalidation requests.
//!
//! [`Live`] holds the rule set and planning context the worker uses; the worker takes one
//! [`Snapshot`] per batch, so a swap lands atomically between batches. [`Controller`] runs beside
//! the worker and owns every change to it:
//!
//! * **Hot reload** — when the rules directory's contents change (polled) or on SIGHUP, the new
//!   set is loaded and checked against the schema; an invalid set is refused with the error
//!   logged and shown in `/status`, and the old rules keep running. A valid one updates
//!   `cache_configs` and the publication, then replaces the old.
//! * **Live `cache_configs`** — `is_active = false` on a rule's row disables it within one poll
//!   interval; `ttl`/`strategy` edits are reported as drift from the rule file.
//! * **Schema changes** — a rule table that left the publication (dropped and recreated) is
//!   re-added and its families invalidated; a renamed one is reported ([`catalog`]).
//! * **Sweeping** — journal rows left `pending`/`running` for `recover_after_secs` (a
//!   cancelled batch, a request whose executor failed) are re-executed and completed.
//! * **Requests** — rows applications insert into `cache_invalidations` with status `pending`
//!   (and no rule) are claimed (`running`), executed on Redis and completed or failed.
//! * **Operator invalidations** — the CLI's and the API's, journaled and fenced ([`manual`]).
//!
//! * `live` — the swappable rule set.
//! * `checked` — loading and checking rules against the schema.
//! * `switches` — `cache_configs` switches and drift.
//! * `catalog` — the catalog watch.
//! * `requests` — application requests.

mod catalog;
mod checked;
mod live;
pub mod manual;
mod requests;
mod switches;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_postgres::Client;

pub(crate) use catalog::{schema_drift, NEWLY_WATCHED, NEW_RULE};
pub use checked::{
    check_against_database, check_schema, current_lsn, fingerprint, load_checked, CheckError,
};
pub use live::{Live, Snapshot};

use crate::config::Config;
use crate::journal::PgJournal;
use crate::plan;
use crate::rules::check;
use crate::runtime::Shutdown;
use crate::status::{add, Status};
use crate::target::Targets;

/// Runs beside the worker; see the module docs.
pub struct Controller {
    pub config: Config,
    pub live: Arc<Live>,
    pub status: Arc<Status>,
    pub reload: Arc<Notify>,
    pub shutdown: Shutdown,
    /// The columns the source keeps: a reload adds what its new rules read.
    pub filter: crate::source::SharedFilter,
}

impl Controller {
    pub async fn run(mut self) {
        let interval = Duration::from_millis(self.config.worker.control_interval_ms.max(50));
        let mut seen = fingerprint(&self.config.rules_dir);
        let mut db: Option<Client> = None;
        let mut targets = match Targets::open(&self.config) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "control loop cannot use the cache");
                return;
            }
        };
        let Ok(pg) = self.config.postgres_config() else {
            return;
        };
        let mut journal = PgJournal::new(pg);
        let mut drift_seen: Vec<String> = Vec::new();
        let stale_after = Duration::from_secs(self.config.worker.recover_after_secs.max(1));
        let sweep_every = (stale_after / 2).max(interval);
        let mut next_sweep = tokio::time::Instant::now() + sweep_every;
        let mut catalog = catalog::CatalogWatch::default();

        let catalog_every =
            Duration::from_millis(self.config.worker.catalog_interval_ms).max(interval);
        let mut next_catalog = tokio::time::Instant::now();
        loop {
            let mut hinted = false;
            let forced = tokio::select! {
                _ = tokio::time::sleep(interval) => false,
                _ = self.reload.notified() => true,
                _ = self.live.catalog_hint.notified() => {
                    hinted = true;
                    false
                }
                _ = self.shutdown.recv() => return,
            };
            if db.as_ref().is_none_or(|c| c.is_closed()) {
                db = match self.config.postgres_config() {
                    Ok(pg) => crate::db::connect(&pg).await.ok(),
                    Err(_) => None,
                };
            }
            let Some(client) = db.as_ref() else {
                continue;
            };
            let now = fingerprint(&self.config.rules_dir);
            if forced || now != seen {
                seen = now;
                self.reload_rules(client, forced, &mut journal, &mut targets)
                    .await;
            }
            if let Err(e) = self.sync_switches(client, &mut drift_seen).await {
                tracing::debug!(error = %e, "reading cache_configs failed");
                db = None;
                continue;
            }
            if let Err(e) = self
                .serve_requests(client, &mut journal, &mut targets)
                .await
            {
                tracing::warn!(error = %e, "executing invalidation requests failed");
            }
            if forced || hinted || tokio::time::Instant::now() >= next_catalog {
                next_catalog = tokio::time::Instant::now() + catalog_every;
                if let Err(e) = self
                    .watch_catalog(client, &mut journal, &mut targets, &mut catalog)
                    .await
                {
                    tracing::warn!(error = %e, "watching the catalog failed");
                }
            }
            if tokio::time::Instant::now() >= next_sweep {
                next_sweep = tokio::time::Instant::now() + sweep_every;
                self.sweep(&mut journal, &mut targets, stale_after).await;
            }
        }
    }

    /// Finishes journal rows left open longer than `stale_after` while the worker runs.
    async fn sweep(&self, journal: &mut PgJournal, targets: &mut Targets, stale_after: Duration) {
        match crate::journal::recover(journal, targets, stale_after).await {
            Ok(0) => {}
            Ok(n) => {
                add(&self.status.counters.recovered_rows, n as u64);
                tracing::warn!(rows = n, "re-executed journal rows left open");
            }
            Err(e) => tracing::warn!(error = %e, "re-executing journal rows left open failed"),
        }
    }

    /// Reloads the rules. Rules that are new get their whole families invalidated once (the
    /// cache may hold values that changed while no rule watched them).
    async fn reload_rules(
        &self,
        client: &Client,
        forced: bool,
        journal: &mut PgJournal,
        targets: &mut Targets,
    ) {
        let why = if forced {
            "SIGHUP"
        } else {
            "rule files changed"
        };
        match load_checked(
            client,
            &self.config.rules_dir,
            &self.config.redis.key_prefix,
            self.config.is_kafka(),
        )
        .await
        {
            Err(e) => {
                tracing::error!(
                    reason = why,
                    "new rules refused; the previous rules keep running:\n{e}"
                );
                self.status.set_rules_error(Some(e.to_string()));
            }
            Ok((rules, catalog)) => {
                let old = self.live.snapshot();
                let old_tables = old.rules.tables();
                let tables = rules.tables();
                if let Err(e) = crate::registry::sync(client, &rules).await {
                    tracing::error!(error = %e, "new rules refused: cannot update cache_configs");
                    self.status
                        .set_rules_error(Some(format!("cache_configs: {e}")));
                    return;
                }
                let new_rules: BTreeSet<String> = rules
                    .rules
                    .iter()
                    .filter(|r| !old.rules.rules.iter().any(|o| o.name == r.name))
                    .map(|r| r.table.clone())
                    .collect();
                let count = rules.len();
                let snapshot = Snapshot {
                    rules: Arc::new(rules),
                    cx: Arc::new(plan::Context {
                        primary_keys: check::primary_keys(&catalog),
                        tables_by_oid: check::table_oids(&catalog),
                        ..(*old.cx).clone()
                    }),
                };
                // The new rules apply from a position: with planning held, read where the WAL
                // is, change the publication, install them from there (see `live`).
                let owed: crate::journal::Owed;
                {
                    let _gate = self.live.switch_gate().await;
                    // First keep what the new rules read (only ever widened: older epochs may
                    // still plan a backlog).
                    let (_, current) = self.filter.get();
                    self.filter.set(
                        current.union(&snapshot.rules.needed_columns(&snapshot.cx.primary_keys)),
                    );
                    let at = match current_lsn(client).await {
                        Ok(at) => at,
                        Err(e) => {
                            tracing::error!(error = %e, "new rules refused: cannot read the WAL position");
                            self.status
                                .set_rules_error(Some(format!("WAL position: {e}")));
                            return;
                        }
                    };
                    // Families owed: new rules' (no rule watched what they cover), and those of
                    // tables this publication change adds (a table recreated under its name is
                    // not published; its changes so far were never streamed). Journaled before
                    // the publication changes, executed after (see `journal::owed`).
                    let mut why: Vec<(String, &str)> = new_rules
                        .iter()
                        .map(|t| (t.clone(), catalog::NEW_RULE))
                        .collect();
                    if tables != old_tables {
                        match crate::source::watched_tables(&self.config, client).await {
                            Ok(None) => {}
                            Ok(Some(watched)) => why.extend(
                                tables
                                    .iter()
                                    .filter(|t| !watched.contains(t) && !new_rules.contains(*t))
                                    .map(|t| (t.clone(), catalog::NEWLY_WATCHED)),
                            ),
                            Err(e) => {
                                tracing::error!(error = %e, "new rules refused: cannot read the publication");
                                self.status
                                    .set_rules_error(Some(format!("publication: {e}")));
                                return;
                            }
                        }
                    }
                    let plan =
                        plan::families(&snapshot.rules, &snapshot.cx, &why, at, chrono::Utc::now());
                    match crate::journal::Owed::record(journal, &plan.actions, plan.marks).await {
                        Ok(o) => owed = o,
                        Err(e) => {
                            tracing::error!(error = %e, "new rules refused: cannot journal their first invalidation");
                            self.status.set_rules_error(Some(format!("journal: {e}")));
                            return;
                        }
                    }
                    if tables != old_tables {
                        if let Err(e) =
                            crate::source::watch_tables(&self.config, client, &tables).await
                        {
                            tracing::error!(error = %e, "new rules refused: cannot update the publication");
                            self.status
                                .set_rules_error(Some(format!("publication: {e}")));
                            return;
                        }
                    }
                    self.live.install(at, snapshot);
                    self.status.set_rule_set(self.live.snapshot().rules);
                    let files = crate::registry::rule_files(&self.config.rules_dir);
                    if let Err(e) =
                        crate::registry::swap_slot_rules(client, &self.config.stream_name(), &files)
                            .await
                    {
                        tracing::warn!(error = %e, "could not record the new rules for this slot");
                    }
                    tracing::info!(from = %at, "new rules in force for changes committed from here on");
                }
                self.status.set_rules(tables.clone(), count);
                self.status.set_rules_error(None);
                add(&self.status.counters.rule_reloads, 1);
                tracing::info!(
                    reason = why,
                    rules = count,
                    tables = tables.len(),
                    "rules reloaded"
                );
                if let Err(e) = owed.settle(journal, targets).await {
                    tracing::warn!(error = %e, "invalidating new rules' families failed; recovery retries it");
                }
            }
        }
    }
}
