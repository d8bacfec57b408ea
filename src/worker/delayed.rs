//! Delayed second passes (`reinvalidate_after`): a rule's keys are invalidated again, or
//! refilled again, some time after the change, to close the cache-aside race where an
//! application fills a key from a read that started before the change committed.
//!
//! [`schedule`] (pure) turns a finished batch's plan into passes, one per delay; a target that
//! several rules asked for gets a pass for each rule's delay. Invalidation passes are durable:
//! the pipeline journals them as `scheduled` rows with their due time before it confirms the
//! batch, so a crash, a restart or a takeover never loses one. [`DelayedRunner`] claims due rows
//! (woken by the pipeline, and every few seconds for rows other runs left) and runs them
//! through the invalidation lifecycle, fenced at their original position so that no refetch in
//! flight lands after them. Refill passes (`refresh`, `write-through`) are best effort, like
//! all warming: held in memory and dropped (counted) when the queue is full. When the worker
//! stops, everything still scheduled runs at once: early beats never.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::action::{Action, WarmJob};
use crate::control::Live;
use crate::fence;
use crate::journal::{self, JournalStore, OnFailure, OpenRow};
use crate::plan::Plan;
use crate::rules::{RuleSet, Strategy};
use crate::status::{add, Status};
use crate::target::CacheTarget;

/// Scheduled rows claimed per round.
const CLAIM: i64 = 500;
/// Delayed refill jobs held in memory at most.
const MAX_HELD_WARMS: usize = 100_000;
/// How often scheduled rows are looked for without a wake-up.
const POLL: Duration = Duration::from_secs(5);

/// The passes one delay asks for.
#[derive(Debug, Default)]
pub(crate) struct Delayed {
    pub delay: Duration,
    /// Invalidated again (rules with strategy `invalidate`): journaled as `scheduled` rows.
    pub actions: Vec<Action>,
    /// Refetched or rewritten again (`refresh`, `write-through`), with their original versions.
    pub warms: Vec<WarmJob>,
}

/// What the pipeline tells the runner.
#[derive(Debug)]
pub(crate) enum Message {
    /// Scheduled rows fall due at this instant: look then.
    Wake(tokio::time::Instant),
    /// Refill these at this instant.
    Warm(tokio::time::Instant, Vec<WarmJob>),
}

/// The delayed passes a finished batch asks for, one per distinct delay. Pure.
pub(crate) fn schedule(plan: &Plan, rules: &RuleSet) -> Vec<Delayed> {
    let mut by_delay: BTreeMap<Duration, Delayed> = BTreeMap::new();
    for rule in rules.rules.iter() {
        let Some(delay) = rule.reinvalidate_after else {
            continue;
        };
        let entry = by_delay.entry(delay).or_insert_with(|| Delayed {
            delay,
            ..Delayed::default()
        });
        if rule.strategy == Strategy::Invalidate {
            for a in plan
                .actions
                .iter()
                .filter(|a| a.rule == rule.name || a.also.contains(&rule.name))
            {
                if entry.actions.iter().any(|e| e.target == a.target) {
                    continue;
                }
                let mut a = a.clone();
                a.reason = format!("reinvalidate_after {delay:?}: {}", a.reason);
                a.rule = rule.name.clone();
                a.also.clear();
                entry.actions.push(a);
            }
        } else {
            entry
                .warms
                .extend(plan.warms.iter().filter(|w| w.rule == rule.name).cloned());
        }
    }
    by_delay
        .into_values()
        .filter(|d| !d.actions.is_empty() || !d.warms.is_empty())
        .collect()
}

/// What the delayed-pass task works with.
pub(crate) struct DelayedRunner<J, C> {
    pub journal: J,
    pub cache: C,
    pub live: Arc<Live>,
    pub status: Arc<Status>,
    pub warm_tx: mpsc::Sender<Vec<WarmJob>>,
}

impl<J: JournalStore, C: CacheTarget> DelayedRunner<J, C> {
    /// Runs passes as they fall due, until the sender is dropped; then runs what is left.
    pub async fn run(mut self, mut rx: mpsc::Receiver<Message>) {
        let mut warms: BTreeMap<(tokio::time::Instant, u64), Vec<WarmJob>> = BTreeMap::new();
        let mut seq = 0u64;
        let mut held = 0usize;
        // Rows left by earlier runs may be due already.
        let mut next_look = tokio::time::Instant::now();
        loop {
            let next_warm = warms.keys().next().map(|k| k.0);
            let wake = next_warm.map_or(next_look, |w| w.min(next_look));
            tokio::select! {
                m = rx.recv() => match m {
                    Some(Message::Wake(at)) => next_look = next_look.min(at),
                    Some(Message::Warm(at, jobs)) => {
                        if held + jobs.len() > MAX_HELD_WARMS {
                            // Refills are best effort: the keys simply stay invalidated.
                            add(&self.status.counters.warm_dropped, jobs.len() as u64);
                        } else {
                            held += jobs.len();
                            seq += 1;
                            warms.insert((at, seq), jobs);
                        }
                    }
                    None => break,
                },
                _ = tokio::time::sleep_until(wake) => {
                    let now = tokio::time::Instant::now();
                    while let Some(entry) = warms.first_entry() {
                        if entry.key().0 > now {
                            break;
                        }
                        let jobs = entry.remove();
                        held -= jobs.len();
                        self.refill(jobs);
                    }
                    if next_look <= now {
                        next_look = now + POLL;
                        if let Err(e) = self.run_due(false).await {
                            tracing::warn!(error = %e, "delayed re-invalidation failed; retrying");
                            next_look = now + Duration::from_secs(1);
                        }
                    }
                }
            }
        }
        // Stopping: early beats never (and what fails stays scheduled for the next run).
        for (_, jobs) in std::mem::take(&mut warms) {
            self.refill(jobs);
        }
        if let Err(e) = self.run_due(true).await {
            tracing::warn!(error = %e, "delayed re-invalidation at shutdown failed; the passes stay scheduled");
        }
    }

    fn refill(&mut self, jobs: Vec<WarmJob>) {
        if self.warm_tx.try_send(jobs).is_err() {
            add(&self.status.counters.warm_dropped, 1);
        } else {
            add(&self.status.counters.reinvalidations, 1);
        }
    }

    /// Claims scheduled rows that are due (or all) and runs them; returns when none is left.
    async fn run_due(&mut self, all: bool) -> Result<(), journal::InvalidationError> {
        loop {
            let rows = self.journal.claim_due(CLAIM, all).await?;
            if rows.is_empty() {
                return Ok(());
            }
            self.execute(&rows).await?;
            add(&self.status.counters.reinvalidations, rows.len() as u64);
        }
    }

    async fn execute(&mut self, rows: &[OpenRow]) -> Result<(), journal::InvalidationError> {
        let snap = self.live.snapshot();
        let fences = fence::fences(
            &snap.rules,
            &snap.cx.key_prefix,
            rows.iter().flat_map(|r| {
                let v = r.version.unwrap_or_default();
                r.targets.iter().map(move |t| (t, v))
            }),
        );
        let ids: Vec<String> = rows.iter().map(|r| r.id.clone()).collect();
        let targets: Vec<_> = rows.iter().flat_map(|r| r.targets.iter()).collect();
        journal::invalidate(
            &mut self.journal,
            &mut self.cache,
            ids,
            &fences,
            &targets,
            // Back to `pending`: recovery finishes them if this run cannot.
            OnFailure::Reopen,
        )
        .await
        .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan;
    use crate::rules::parse_file;
    use crate::source::{Change, Column, Datum, Lsn, Op, Relation, Transaction, Tuple};
    use std::path::Path;

    #[test]
    fn a_target_two_rules_ask_for_gets_each_rules_delay() {
        let rules = RuleSet::new(
            parse_file(
                Path::new("r.toml"),
                "[[rule]]\nname='a'\ntable='public.t'\nkeys=['t:{id}']\nreinvalidate_after='1s'\n\
                 [[rule]]\nname='b'\ntable='public.t'\nkeys=['t:{id}']\nreinvalidate_after='3s'\n",
            )
            .unwrap(),
        );
        let relation = Arc::new(Relation {
            oid: 1,
            schema: "public".into(),
            name: "t".into(),
            replica_identity: b'd',
            columns: vec![Column {
                name: "id".into(),
                type_oid: 23,
                is_key: true,
            }],
        });
        let tx = Transaction {
            xid: 1,
            commit_lsn: Lsn(5),
            end_lsn: Lsn(6),
            commit_time: chrono::Utc::now(),
            changes: vec![Change {
                relation,
                op: Op::Insert,
                old: None,
                new: Some(Tuple(vec![Datum::Text("7".into())])),
                undecodable: None,
            }],
        };
        let p = plan::build(&rules, &plan::Context::default(), &[tx]);
        assert_eq!(p.actions.len(), 1, "one target, deduplicated");
        let passes = schedule(&p, &rules);
        let delays: Vec<(Duration, usize)> =
            passes.iter().map(|d| (d.delay, d.actions.len())).collect();
        assert_eq!(
            delays,
            [(Duration::from_secs(1), 1), (Duration::from_secs(3), 1)]
        );
    }
}
