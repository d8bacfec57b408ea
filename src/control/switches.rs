//! Live `cache_configs` switches: `is_active = false` on a rule's row disables it within one
//! poll interval; `ttl`/`strategy` edits are reported as drift from the rule file (the file
//! wins).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use tokio_postgres::Client;

use super::{Controller, Snapshot};
use crate::plan;
use crate::rules;

impl Controller {
    /// Applies `is_active` switches and reports `ttl`/`strategy` drift.
    pub(super) async fn sync_switches(
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
}
