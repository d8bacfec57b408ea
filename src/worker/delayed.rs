//! Delayed second passes (`reinvalidate_after`): a rule's keys are invalidated again, or
//! refilled again, some time after the change, to close the cache-aside race where an
//! application fills a key from a read that started before the change committed.
//!
//! [`schedule`] (pure) turns a finished batch's plan into [`Delayed`] passes, one per delay.
//! [`run`] holds them in a queue ordered by due time and runs each through the invalidation
//! lifecycle (journaled like any invalidation, fenced so that no refetch in flight lands after
//! it), retrying every second until it succeeds. When the worker stops (its sender is dropped),
//! the passes still queued run at once: early beats never.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::action::{Action, WarmJob};
use crate::control::Live;
use crate::fence;
use crate::journal::{self, JournalStore, OnFailure, Rows};
use crate::plan::Plan;
use crate::rules::{RuleSet, Strategy};
use crate::status::{add, Status};
use crate::target::CacheTarget;

/// Work scheduled by `reinvalidate_after`.
#[derive(Debug)]
pub(crate) struct Delayed {
    pub due: tokio::time::Instant,
    /// Unlinked again (rules with strategy `invalidate`), journaled like any invalidation.
    pub actions: Vec<Action>,
    /// Refetched or rewritten again (`refresh`, `write-through`), with their original versions.
    pub warms: Vec<WarmJob>,
}

/// The delayed passes a finished batch asks for, one per distinct delay. Pure (apart from
/// reading the clock for due times).
pub(crate) fn schedule(plan: &Plan, rules: &RuleSet) -> Vec<Delayed> {
    let mut by_delay: BTreeMap<Duration, Delayed> = BTreeMap::new();
    for rule in rules.rules.iter() {
        let Some(delay) = rule.reinvalidate_after else {
            continue;
        };
        let entry = by_delay.entry(delay).or_insert_with(|| Delayed {
            due: tokio::time::Instant::now() + delay,
            actions: Vec::new(),
            warms: Vec::new(),
        });
        if rule.strategy == Strategy::Invalidate {
            entry.actions.extend(
                plan.actions
                    .iter()
                    .filter(|a| a.rule == rule.name)
                    .map(|a| {
                        let mut a = a.clone();
                        a.reason = format!("reinvalidate_after {delay:?}: {}", a.reason);
                        a
                    }),
            );
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
    /// Runs delayed passes as they fall due, until the sender is dropped and the queue is empty.
    pub async fn run(mut self, mut rx: mpsc::Receiver<Delayed>) {
        let mut queue: BTreeMap<(tokio::time::Instant, u64), Delayed> = BTreeMap::new();
        let mut seq = 0u64;
        let mut closing = false;
        loop {
            if closing && queue.is_empty() {
                return;
            }
            let next = if closing {
                Some(tokio::time::Instant::now())
            } else {
                queue.keys().next().map(|k| k.0)
            };
            tokio::select! {
                d = rx.recv(), if !closing => match d {
                    Some(d) => {
                        seq += 1;
                        queue.insert((d.due, seq), d);
                    }
                    None => closing = true,
                },
                _ = async { tokio::time::sleep_until(next.unwrap_or_else(tokio::time::Instant::now)).await }, if next.is_some() => {
                    let Some((_, d)) = queue.pop_first() else { continue };
                    if let Some(retry) = self.pass(d, closing).await {
                        seq += 1;
                        queue.insert((retry.due, seq), retry);
                    }
                }
            }
        }
    }

    /// Runs one pass; returns it again (due in a second) if it must be retried.
    async fn pass(&mut self, d: Delayed, closing: bool) -> Option<Delayed> {
        if !d.warms.is_empty() && self.warm_tx.try_send(d.warms.clone()).is_err() {
            add(&self.status.counters.warm_dropped, 1);
        }
        if d.actions.is_empty() {
            add(&self.status.counters.reinvalidations, 1);
            return None;
        }
        let snap = self.live.snapshot();
        let fences = fence::fences(
            &snap.rules,
            &snap.cx.key_prefix,
            d.actions.iter().map(|a| (&a.target, a.version)),
        );
        let targets: Vec<_> = d.actions.iter().map(|a| &a.target).collect();
        let r = journal::invalidate(
            &mut self.journal,
            &mut self.cache,
            Rows::Record(&d.actions),
            &fences,
            &targets,
            OnFailure::Fail,
        )
        .await;
        match r {
            Ok(_) => {
                add(&self.status.counters.reinvalidations, 1);
                None
            }
            Err(e) if closing => {
                tracing::warn!(error = %e, "delayed re-invalidation failed at shutdown");
                None
            }
            Err(e) => {
                // Retried until it succeeds, like any invalidation.
                tracing::warn!(error = %e, "delayed re-invalidation failed; retrying in 1 s");
                Some(Delayed {
                    due: tokio::time::Instant::now() + Duration::from_secs(1),
                    actions: d.actions,
                    warms: Vec::new(),
                })
            }
        }
    }
}
