//! [`Live`]: the rule sets the worker plans with, each in force from a source position.
//!
//! A reload does not swap rules at wall-clock time: it installs a new *epoch* that applies to
//! transactions committed at or after the WAL position read while the pipeline is held at its
//! planning gate. Transactions committed before it — a backlog still on its way — are planned
//! with the rules that were live when they were committed, so removing or changing a rule never
//! confirms its pending changes with no action. Why the gate makes the position exact: every
//! transaction planned before the gate was taken was already received, so it committed before
//! the position read afterwards; every transaction planned after the gate is released is
//! matched to its epoch by commit position. Epochs older than what the pipeline can still see
//! are dropped as it moves on.
//!
//! Switches (`is_active`) and catalog facts (table identities) change the newest epoch in
//! place: they are operator decisions and facts, not rule versions.

use std::sync::{Arc, RwLock};

use crate::plan;
use crate::rules::RuleSet;
use crate::source::Lsn;

/// What a transaction is planned with.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub rules: Arc<RuleSet>,
    pub cx: Arc<plan::Context>,
}

/// The rule epochs, oldest first; the first applies from the start.
#[derive(Debug)]
pub struct Live {
    epochs: RwLock<Vec<(Lsn, Snapshot)>>,
    gate: tokio::sync::RwLock<()>,
    /// Notified when the stream shows a table the rules know under another name or identity
    /// (a rename, a recreation): the catalog watch looks at once.
    pub catalog_hint: tokio::sync::Notify,
}

impl Live {
    pub fn new(rules: RuleSet, cx: plan::Context) -> Self {
        Live {
            epochs: RwLock::new(vec![(
                Lsn(0),
                Snapshot {
                    rules: Arc::new(rules),
                    cx: Arc::new(cx),
                },
            )]),
            gate: tokio::sync::RwLock::new(()),
            catalog_hint: tokio::sync::Notify::new(),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<(Lsn, Snapshot)>> {
        self.epochs.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Vec<(Lsn, Snapshot)>> {
        self.epochs.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The newest rules (for everything that is not planning a committed transaction).
    pub fn snapshot(&self) -> Snapshot {
        self.read()
            .last()
            .map(|(_, s)| s.clone())
            .unwrap_or_else(unreachable_empty)
    }

    /// The rules in force for a transaction committed at `commit`.
    pub fn snapshot_at(&self, commit: Lsn) -> Snapshot {
        let epochs = self.read();
        epochs
            .iter()
            .rev()
            .find(|(from, _)| *from <= commit)
            .or(epochs.first())
            .map(|(_, s)| s.clone())
            .unwrap_or_else(unreachable_empty)
    }

    /// Held by the pipeline while it plans a batch.
    pub async fn plan_gate(&self) -> tokio::sync::RwLockReadGuard<'_, ()> {
        self.gate.read().await
    }

    /// Held by a reload while it reads the switch position and installs the epoch.
    pub async fn switch_gate(&self) -> tokio::sync::RwLockWriteGuard<'_, ()> {
        self.gate.write().await
    }

    /// Installs rules in force from `from` on (call with the switch gate held).
    pub fn install(&self, from: Lsn, snapshot: Snapshot) {
        let mut epochs = self.write();
        epochs.retain(|(f, _)| *f < from);
        epochs.push((from, snapshot));
    }

    /// Forgets epochs no transaction at or after `commit` can need.
    pub fn prune(&self, commit: Lsn) {
        let mut epochs = self.write();
        let keep_from = epochs
            .iter()
            .rposition(|(from, _)| *from <= commit)
            .unwrap_or(0);
        if keep_from > 0 {
            epochs.drain(..keep_from);
        }
    }

    /// How many epochs are held (for tests and `/status`).
    pub fn epochs(&self) -> usize {
        self.read().len()
    }

    /// Changes the newest epoch in place (switches, catalog facts).
    pub(crate) fn replace(&self, f: impl FnOnce(&Snapshot) -> Snapshot) {
        let mut epochs = self.write();
        if let Some((_, s)) = epochs.last_mut() {
            *s = f(s);
        }
    }
}

/// `Live` always holds at least one epoch: it is created with one and never emptied.
fn unreachable_empty() -> Snapshot {
    Snapshot {
        rules: Arc::new(RuleSet::default()),
        cx: Arc::new(plan::Context::default()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::parse_file;
    use std::path::Path;

    fn set(name: &str) -> RuleSet {
        RuleSet::new(
            parse_file(
                Path::new("r.toml"),
                &format!("[[rule]]\nname='{name}'\ntable='public.t'\nkeys=['t:{{id}}']\n"),
            )
            .unwrap(),
        )
    }

    fn name(s: &Snapshot) -> &str {
        &s.rules.rules[0].name
    }

    #[test]
    fn transactions_get_the_rules_of_their_commit_position() {
        let live = Live::new(set("a"), plan::Context::default());
        live.install(
            Lsn(100),
            Snapshot {
                rules: Arc::new(set("b")),
                cx: Arc::new(plan::Context::default()),
            },
        );
        assert_eq!(name(&live.snapshot_at(Lsn(99))), "a");
        assert_eq!(name(&live.snapshot_at(Lsn(100))), "b");
        assert_eq!(name(&live.snapshot()), "b");
        live.prune(Lsn(50));
        assert_eq!(live.epochs(), 2, "a backlog before 100 may still come");
        live.prune(Lsn(150));
        assert_eq!(live.epochs(), 1);
        assert_eq!(
            name(&live.snapshot_at(Lsn(1))),
            "b",
            "pruned: the oldest applies"
        );
    }
}
