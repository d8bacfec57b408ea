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
//! * **Requests** — rows applications insert into `cache_invalidations` with status `pending`
//!   (and no rule) are claimed (`running`), executed on Redis and completed or failed.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::Utc;
use tokio::sync::{watch, Notify};
use tokio_postgres::Client;

use crate::cache::Cache;
use crate::config::Config;
use crate::journal::row_targets;
use crate::plan;
use crate::rules::{self, check, RuleErrors, RuleSet, Severity};
use crate::status::{add, Status};

/// What one batch is planned with.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub rules: Arc<RuleSet>,
    pub cx: Arc<plan::Context>,
}

/// The worker's current rules, swapped whole.
#[derive(Debug)]
pub struct Live {
    inner: RwLock<Snapshot>,
}

impl Live {
    pub fn new(rules: RuleSet, cx: plan::Context) -> Self {
        Live {
            inner: RwLock::new(Snapshot {
                rules: Arc::new(rules),
                cx: Arc::new(cx),
            }),
        }
    }

    pub fn snapshot(&self) -> Snapshot {
        self.inner.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn replace(&self, f: impl FnOnce(&Snapshot) -> Snapshot) {
        let mut guard = self.inner.write().unwrap_or_else(|p| p.into_inner());
        *guard = f(&guard);
    }
}

/// A fingerprint of the rule files' names and contents (FNV-1a), to notice edits.
pub fn fingerprint(dir: &Path) -> u64 {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    for f in files {
        eat(f.to_string_lossy().as_bytes());
        eat(&std::fs::read(&f).unwrap_or_default());
        eat(&[0xff]);
    }
    h
}

/// Loads and checks a rule set against the schema; `Ok` only when it can run.
pub async fn load_checked(
    client: &Client,
    dir: &Path,
) -> Result<(RuleSet, std::collections::HashMap<String, check::TableInfo>), RuleErrors> {
    let rules = rules::load_dir(dir)?;
    let catalog = check_against_database(client, &rules)
        .await
        .map_err(|e| match e {
            CheckError::Rules(e) => e,
            CheckError::Postgres(e) => RuleErrors(vec![rules::Diagnostic {
                at: rules::Location {
                    file: dir.to_path_buf(),
                    line: 0,
                    col: 0,
                },
                severity: Severity::Error,
                message: format!("cannot read the schema: {e}"),
            }]),
        })?;
    Ok((rules, catalog))
}

/// Why a rule set cannot run against a database.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("{0}")]
    Rules(RuleErrors),
    #[error("postgres: {0}")]
    Postgres(#[from] tokio_postgres::Error),
}

/// Every check that needs the database — schema, replica identity, conditions, warm queries —
/// for the worker's start and every reload. Returns the catalog the rules were checked against.
pub async fn check_against_database(
    client: &Client,
    rules: &RuleSet,
) -> Result<std::collections::HashMap<String, check::TableInfo>, CheckError> {
    let catalog = check::load_catalog(client, &rules.tables()).await?;
    check_schema(rules, &catalog).map_err(CheckError::Rules)?;
    let queries = check::check_queries(client, rules).await;
    if !queries.is_empty() {
        return Err(CheckError::Rules(RuleErrors(queries)));
    }
    Ok(catalog)
}

/// Checks rules against a catalog: logs warnings, returns the errors.
pub fn check_schema(
    rules: &RuleSet,
    catalog: &std::collections::HashMap<String, check::TableInfo>,
) -> Result<(), RuleErrors> {
    let diags = check::check(rules, catalog);
    for d in diags.iter().filter(|d| d.severity == Severity::Warning) {
        tracing::warn!("{d}");
    }
    let errors: Vec<_> = diags
        .into_iter()
        .filter(|d| d.severity == Severity::Error)
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(RuleErrors(errors))
    }
}

/// The server's current WAL position.
pub async fn current_lsn(client: &Client) -> Result<crate::source::Lsn, tokio_postgres::Error> {
    let v: String = client
        .query_one("SELECT (pg_current_wal_lsn() - '0/0')::text", &[])
        .await?
        .get(0);
    Ok(crate::source::Lsn(v.parse().unwrap_or(u64::MAX)))
}

/// Runs beside the worker; see the module docs.
pub struct Controller {
    pub config: Config,
    pub live: Arc<Live>,
    pub status: Arc<Status>,
    pub reload: Arc<Notify>,
    pub shutdown: watch::Receiver<bool>,
}

impl Controller {
    pub async fn run(mut self) {
        let interval = Duration::from_millis(self.config.worker.control_interval_ms.max(50));
        let mut seen = fingerprint(&self.config.rules_dir);
        let mut db: Option<Client> = None;
        let mut cache = match Cache::new(&self.config.redis.url, self.config.cache_options()) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "control loop cannot use Redis");
                return;
            }
        };
        let mut drift_seen: Vec<String> = Vec::new();
        loop {
            let forced = tokio::select! {
                _ = tokio::time::sleep(interval) => false,
                _ = self.reload.notified() => true,
                _ = self.shutdown.wait_for(|s| *s) => return,
            };
            if db.as_ref().is_none_or(|c| c.is_closed()) {
                db = match self.config.postgres_config() {
                    Ok(pg) => crate::journal::connect(&pg).await.ok(),
                    Err(_) => None,
                };
            }
            let Some(client) = db.as_ref() else {
                continue;
            };
            let now = fingerprint(&self.config.rules_dir);
            if forced || now != seen {
                seen = now;
                self.reload_rules(client, forced).await;
            }
            if let Err(e) = self.sync_switches(client, &mut drift_seen).await {
                tracing::debug!(error = %e, "reading cache_configs failed");
                db = None;
                continue;
            }
            if let Err(e) = self.serve_requests(client, &mut cache).await {
                tracing::warn!(error = %e, "executing invalidation requests failed");
            }
        }
    }

    async fn reload_rules(&self, client: &Client, forced: bool) {
        let why = if forced {
            "SIGHUP"
        } else {
            "rule files changed"
        };
        match load_checked(client, &self.config.rules_dir).await {
            Err(e) => {
                tracing::error!(
                    reason = why,
                    "new rules refused; the previous rules keep running:\n{e}"
                );
                self.status.set_rules_error(Some(e.to_string()));
            }
            Ok((rules, catalog)) => {
                let old_tables = self.live.snapshot().rules.tables();
                let tables = rules.tables();
                if let Err(e) = crate::registry::sync(client, &rules).await {
                    tracing::error!(error = %e, "new rules refused: cannot update cache_configs");
                    self.status
                        .set_rules_error(Some(format!("cache_configs: {e}")));
                    return;
                }
                // The new rules go live before the publication grows: a change to a newly
                // added table must never be planned with rules that do not know it.
                let count = rules.len();
                let previous = self.live.snapshot();
                self.live.replace(|old| Snapshot {
                    rules: Arc::new(rules),
                    cx: Arc::new(plan::Context {
                        primary_keys: check::primary_keys(&catalog),
                        ..(*old.cx).clone()
                    }),
                });
                if tables != old_tables {
                    let pg = &self.config.postgres;
                    if let Err(e) =
                        crate::source::postgres::prepare(client, &pg.slot, &pg.publication, &tables)
                            .await
                    {
                        self.live.replace(|_| previous);
                        tracing::error!(error = %e, "new rules refused: cannot update the publication");
                        self.status
                            .set_rules_error(Some(format!("publication: {e}")));
                        return;
                    }
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
            }
        }
    }

    /// Applies `is_active` switches and reports `ttl`/`strategy` drift.
    async fn sync_switches(
        &self,
        client: &Client,
        drift_seen: &mut Vec<String>,
    ) -> Result<(), tokio_postgres::Error> {
        let snap = self.live.snapshot();
        let names: Vec<&str> = snap.rules.rules.iter().map(|r| r.name.as_str()).collect();
        let rows = client
            .query(
                "SELECT name, is_active, ttl, strategy FROM cache_configs WHERE name = ANY($1)",
                &[&names],
            )
            .await?;
        let mut disabled = HashSet::new();
        let mut drift = Vec::new();
        let by_name: BTreeMap<&str, &rules::Rule> = snap
            .rules
            .rules
            .iter()
            .map(|r| (r.name.as_str(), r))
            .collect();
        for row in rows {
            let name: String = row.get(0);
            let active: bool = row.get(1);
            let ttl: Option<i32> = row.get(2);
            let strategy: String = row.get(3);
            if !active {
                disabled.insert(name.clone());
            }
            if let Some(rule) = by_name.get(name.as_str()) {
                let file_ttl = rule.ttl.map(|t| i32::try_from(t).unwrap_or(i32::MAX));
                if ttl != file_ttl {
                    drift.push(format!(
                        "{name}: ttl is {} in cache_configs but {} in {}",
                        ttl.map_or("NULL".into(), |t| t.to_string()),
                        file_ttl.map_or("unset".into(), |t| t.to_string()),
                        rule.at.file.display()
                    ));
                }
                if strategy != rule.strategy.as_str() {
                    drift.push(format!(
                        "{name}: strategy is {strategy:?} in cache_configs but {:?} in {}",
                        rule.strategy.as_str(),
                        rule.at.file.display()
                    ));
                }
            }
        }
        if drift != *drift_seen {
            for d in drift.iter().filter(|d| !drift_seen.contains(d)) {
                tracing::warn!("drift: {d}; the rule file wins");
            }
            *drift_seen = drift.clone();
            self.status.set_drift(drift);
        }
        if disabled != snap.cx.disabled {
            let mut list: Vec<&String> = disabled.iter().collect();
            list.sort();
            tracing::info!(disabled = ?list, "rule switches changed in cache_configs");
            self.status
                .set_disabled(list.iter().map(|s| s.to_string()).collect());
            self.live.replace(|old| Snapshot {
                rules: old.rules.clone(),
                cx: Arc::new(plan::Context {
                    disabled,
                    ..(*old.cx).clone()
                }),
            });
        }
        Ok(())
    }

    /// Claims application requests (`pending`, no rule), executes and completes them.
    async fn serve_requests(&self, client: &Client, cache: &mut Cache) -> Result<(), String> {
        let rows = client
            .query(
                "UPDATE cache_invalidations SET status = 'running' WHERE id IN ( \
                     SELECT id FROM cache_invalidations \
                     WHERE status = 'pending' AND rule_name IS NULL \
                     ORDER BY created_at LIMIT 500 FOR UPDATE SKIP LOCKED) \
                 RETURNING id::text, key_pattern, kind, keys",
                &[],
            )
            .await
            .map_err(|e| e.to_string())?;
        if rows.is_empty() {
            return Ok(());
        }
        let mut ids = Vec::with_capacity(rows.len());
        let mut targets = Vec::new();
        for r in &rows {
            ids.push(r.get::<_, String>(0));
            let kind: String = r.get(2);
            targets.extend(row_targets(&kind, r.get(1), r.get(3)));
        }
        // Warmed keys among them are fenced first, at the current WAL position (newer than
        // any refetch in flight).
        let snap = self.live.snapshot();
        let lsn = current_lsn(client).await.map_err(|e| e.to_string())?;
        let fences = plan::fences(
            &snap.rules,
            &snap.cx.key_prefix,
            targets.iter().map(|t| (t, lsn)),
        );
        match cache.execute(&fences, targets.iter()).await {
            Ok(report) => {
                client
                    .execute(
                        "UPDATE cache_invalidations SET status = 'completed', completed_at = $2 \
                         WHERE id = ANY($1::text[]::uuid[])",
                        &[&ids, &Utc::now()],
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                add(&self.status.counters.requests, ids.len() as u64);
                tracing::info!(
                    requests = ids.len(),
                    keys_removed = report.removed,
                    "executed invalidation requests"
                );
                Ok(())
            }
            Err(e) => {
                let msg = e.to_string();
                // Back to pending: the next poll retries them.
                let _ = client
                    .execute(
                        "UPDATE cache_invalidations SET status = 'pending', error = $2 \
                         WHERE id = ANY($1::text[]::uuid[])",
                        &[&ids, &msg],
                    )
                    .await;
                Err(msg)
            }
        }
    }
}
