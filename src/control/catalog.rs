//! The catalog watch: schema changes under the running worker must not lose invalidations.
//!
//! Every couple of seconds (and after every reload) the controller compares what the rules
//! name with the catalog:
//!
//! * **A table left the publication** — `DROP TABLE` removes it, and a table recreated under
//!   the same name is a new relation no publication names, so its changes are not streamed at
//!   all. The watch re-adds it, then invalidates the whole key families of its rules (changes
//!   committed before the repair were never streamed, so which keys they touched is unknown),
//!   retrying that invalidation until it is done, and says so in the log and `/status`
//!   (`publication_repairs`).
//! * **A table was renamed** — it keeps its identity (OID) and its place in the publication;
//!   its changes arrive under the new name and are matched to the rules by OID (see
//!   [`crate::plan`]), so invalidation goes on. The watch reports the stale rule file in
//!   `/status` (`drift`) and the log, with the line to change.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use chrono::Utc;
use tokio_postgres::Client;

use super::{current_lsn, Controller, Snapshot};
use crate::journal::{self, PgJournal};
use crate::plan;
use crate::rules::check;
use crate::status::add;
use crate::target::Targets;

/// Why a repaired table's families are invalidated.
const LOST: &str =
    "the publication had lost the table: changes before its repair were not streamed";
/// Why the families of a table added to the publication at start are invalidated.
pub(crate) const NEWLY_WATCHED: &str =
    "a table newly added to the publication: changes before were not streamed";
/// Why a new rule's families are invalidated.
pub(crate) const NEW_RULE: &str =
    "a new rule: the cache may hold values that changed while no rule watched them";

/// What the watch remembers between runs.
#[derive(Debug, Default)]
pub(super) struct CatalogWatch {
    /// Renames already reported.
    reported: Vec<String>,
}

/// Why one run of the watch stopped early (it runs again on the next tick).
#[derive(Debug, thiserror::Error)]
pub(super) enum WatchError {
    #[error("reading the catalog: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("repairing the publication: {0}")]
    Source(#[from] crate::source::SourceError),
    #[error(transparent)]
    Invalidation(#[from] journal::InvalidationError),
    #[error(transparent)]
    Journal(#[from] journal::JournalError),
}

impl Controller {
    pub(super) async fn watch_catalog(
        &self,
        client: &Client,
        journal: &mut PgJournal,
        targets: &mut Targets,
        state: &mut CatalogWatch,
    ) -> Result<(), WatchError> {
        if self.config.is_kafka() {
            // The publication and the table identities are the Debezium connector's business;
            // the worker's database may not even hold the watched tables.
            return Ok(());
        }
        let snap = self.live.snapshot();
        let rule_tables = snap.rules.tables();
        // Known identities and what they are called now.
        let oids: Vec<u32> = snap.cx.tables_by_oid.keys().copied().collect();
        let now_named = check::names_by_oid(client, &oids).await?;
        // The rule tables as they are now: under their rule names, and renamed ones under
        // their new names. Which rule tables exist by name, with their identity, comes from it.
        let mut names: Vec<String> = rule_tables.clone();
        names.extend(now_named.values().cloned());
        let now_catalog = check::load_catalog(client, &names).await?;
        let by_name: HashMap<String, u32> = rule_tables
            .iter()
            .filter_map(|t| now_catalog.get(t).map(|i| (t.clone(), i.oid)))
            .collect();
        // Each rule table's current name, where its known identity still exists.
        let current: HashMap<&String, &String> = snap
            .cx
            .tables_by_oid
            .iter()
            .filter_map(|(oid, rule)| now_named.get(oid).map(|now| (rule, now)))
            .collect();
        let published: BTreeSet<String> = crate::source::watched_tables(&self.config, client)
            .await?
            .unwrap_or_default()
            .into_iter()
            .collect();

        // Renames: report them (once each), keep matching by identity.
        let mut renames = Vec::new();
        for (oid, rule_name) in &snap.cx.tables_by_oid {
            if let Some(now) = now_named.get(oid).filter(|n| *n != rule_name) {
                let files: BTreeSet<String> = snap
                    .rules
                    .for_table(rule_name)
                    .map(|r| r.at.file.display().to_string())
                    .collect();
                renames.push(format!(
                    "table {rule_name} was renamed to {now}: its changes still invalidate the rules \
                     that name {rule_name}, but the rule file is stale; set table = \"{now}\" in {}",
                    files.into_iter().collect::<Vec<_>>().join(", ")
                ));
            }
        }
        renames.sort();
        // Each rule checked against its table as it is now (under its new name if renamed).
        let mut catalog: HashMap<String, check::TableInfo> = HashMap::new();
        for t in &rule_tables {
            let renamed = current.get(t).copied();
            let info = now_catalog
                .get(t)
                .or_else(|| renamed.and_then(|n| now_catalog.get(n)));
            if let Some(info) = info {
                catalog.insert(t.clone(), info.clone());
            }
        }
        let (drift, affected) = schema_drift(&snap.rules, &catalog);
        if affected != snap.cx.conservative {
            tracing::warn!(rules = ?affected, "rules running conservatively (schema drift) changed");
            self.live.replace(|old| Snapshot {
                rules: old.rules.clone(),
                cx: Arc::new(plan::Context {
                    conservative: affected.clone(),
                    ..(*old.cx).clone()
                }),
            });
        }
        renames.extend(drift);
        for r in renames.iter().filter(|r| !state.reported.contains(r)) {
            tracing::warn!("schema drift: {r}");
        }
        // Always set: the start may have reported drift this watch has not seen.
        self.status.set_schema_drift(renames.clone());
        state.reported = renames;

        // Tables the publication must hold: each rule table under its current name.
        let mut wanted: BTreeSet<String> = BTreeSet::new();
        for t in &rule_tables {
            let renamed = current.get(t).copied();
            if let Some(now) = renamed {
                wanted.insert(now.clone());
            }
            if by_name.contains_key(t) {
                wanted.insert(t.clone());
            }
        }
        let missing: Vec<String> = wanted
            .iter()
            .filter(|t| !published.contains(*t))
            .cloned()
            .collect();
        if !missing.is_empty() {
            // Changes to these tables before they rejoin the publication were never streamed:
            // their families are journaled now and invalidated once the publication holds
            // them again (see `journal::owed`: a crash in between is recovered).
            let owed_for: Vec<(String, &str)> = missing
                .iter()
                .map(|t| {
                    (
                        current
                            .iter()
                            .find(|(_, now)| **now == t)
                            .map_or_else(|| t.clone(), |(rule, _)| (*rule).clone()),
                        LOST,
                    )
                })
                .collect();
            let at = current_lsn(client).await?;
            let plan = plan::families(&snap.rules, &snap.cx, &owed_for, at, Utc::now());
            let owed = journal::Owed::record(journal, &plan.actions, plan.marks).await?;
            let list: Vec<String> = wanted.iter().cloned().collect();
            crate::source::watch_tables(&self.config, client, &list).await?;
            add(&self.status.counters.publication_repairs, 1);
            tracing::warn!(tables = ?missing, "the publication had lost rule tables (dropped and recreated?); re-added them, invalidating their whole key families");
            // Recreated tables have new identities: match them too.
            let new_oids: Vec<(u32, String)> = missing
                .iter()
                .filter_map(|t| by_name.get(t).map(|oid| (*oid, t.clone())))
                .collect();
            if !new_oids.is_empty() {
                let mut recorded = snap.cx.tables_by_oid.clone();
                recorded.extend(new_oids.iter().cloned());
                if let Err(e) = crate::registry::record_slot_tables(
                    client,
                    &self.config.stream_name(),
                    &recorded,
                )
                .await
                {
                    tracing::debug!(error = %e, "could not record the tables' identities");
                }
                self.live.replace(|old| Snapshot {
                    rules: old.rules.clone(),
                    cx: Arc::new(plan::Context {
                        tables_by_oid: old
                            .cx
                            .tables_by_oid
                            .iter()
                            .map(|(k, v)| (*k, v.clone()))
                            .chain(new_oids.iter().cloned())
                            .collect(),
                        ..(*old.cx).clone()
                    }),
                });
            }
            owed.settle(journal, targets).await?;
        }
        Ok(())
    }
}

/// Rules that no longer match the schema, and what to tell the operator. Pure: the checks of
/// [`check::check`] against the catalog as it is now, each error attributed to its rule.
pub(crate) fn schema_drift(
    rules: &crate::rules::RuleSet,
    catalog: &HashMap<String, check::TableInfo>,
) -> (Vec<String>, std::collections::HashSet<String>) {
    let mut messages = Vec::new();
    let mut affected = std::collections::HashSet::new();
    for d in check::check(rules, catalog)
        .into_iter()
        .filter(|d| d.severity == crate::rules::Severity::Error)
    {
        let rule = rules
            .rules
            .iter()
            .filter(|r| r.at.file == d.at.file && r.at.line <= d.at.line)
            .max_by_key(|r| r.at.line);
        match rule {
            Some(r) => {
                messages.push(format!(
                    "{d} (running conservatively: every change of {} invalidates rule {:?}'s whole \
                     key families until the rule file is fixed)",
                    r.table, r.name
                ));
                affected.insert(r.name.clone());
            }
            None => messages.push(d.to_string()),
        }
    }
    (messages, affected)
}
