//! Tests of the pipeline itself, with in-memory source, cache target and journal: the
//! acknowledgement contract under failures, and a property test over arbitrary interleavings
//! of batches, cache and journal failures, lost streams and crashes.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use proptest::prelude::*;

use super::confirm::Confirmations;
use super::pipeline::{Followers, Pipeline};
use super::scans::Scans;
use crate::action::Target;
use crate::control::Live;
use crate::journal::memory::MemoryJournal;
use crate::journal::{Trail, TrailLimits};
use crate::plan;
use crate::rules::{parse_file, RuleSet};
use crate::runtime::{Backoff, ShutdownSender};
use crate::source::memory::{ConfirmCheck, MemoryLog, MemorySource};
use crate::source::{Change, Column, Datum, Lsn, Op, Relation, Transaction, Tuple};
use crate::status::Status;
use crate::target::memory::MemoryTarget;
use crate::target::Targets;

const RULES: &str = "[[rule]]\nname = 't'\ntable = 'public.t'\nkeys = ['t:{id}']\n";

fn rules(src: &str) -> RuleSet {
    RuleSet::new(parse_file(Path::new("t.toml"), src).expect("valid rule"))
}

/// Transaction `i` updates rows `ids`; it commits at 10·i+5 and ends at 10·i+10.
fn transaction(i: usize, ids: &[u8]) -> Transaction {
    let relation = Arc::new(Relation {
        oid: 1,
        schema: "public".into(),
        name: "t".into(),
        replica_identity: b'd',
        columns: vec![Column {
            name: "id".into(),
            type_oid: crate::source::oid::INT4,
            is_key: true,
        }],
    });
    Transaction {
        xid: i as u32 + 1,
        commit_lsn: Lsn(10 * i as u64 + 5),
        end_lsn: Lsn(10 * i as u64 + 10),
        commit_time: Utc::now(),
        changes: ids
            .iter()
            .map(|id| Change {
                relation: relation.clone(),
                op: Op::Update,
                old: None,
                new: Some(Tuple(vec![Datum::Text(id.to_string())])),
                undecodable: None,
            })
            .collect(),
    }
}

/// The world outside one run of the worker: it survives crashes.
struct World {
    log: Arc<Mutex<MemoryLog>>,
    cache: MemoryTarget,
    journal: MemoryJournal,
    keys_by_tx: Vec<(Lsn, Vec<String>)>,
    rules: &'static str,
}

impl World {
    fn new(txs: &[Vec<u8>]) -> World {
        let transactions: Vec<Transaction> = txs
            .iter()
            .enumerate()
            .map(|(i, ids)| transaction(i, ids))
            .collect();
        let keys_by_tx = transactions
            .iter()
            .map(|t| {
                let keys = t
                    .changes
                    .iter()
                    .filter_map(|c| match c.new.as_ref()?.0.first()? {
                        Datum::Text(id) => Some(format!("t:{id}")),
                        _ => None,
                    })
                    .collect();
                (t.end_lsn, keys)
            })
            .collect();
        World {
            log: Arc::new(Mutex::new(MemoryLog {
                transactions,
                ..MemoryLog::default()
            })),
            cache: MemoryTarget::new(),
            journal: MemoryJournal::new(),
            keys_by_tx,
            rules: RULES,
        }
    }

    /// The contract: at a confirmation of `lsn`, every key of every transaction ending at or
    /// before it was unlinked on the cache and is in a `completed` journal row.
    fn check(&self) -> ConfirmCheck {
        let (cache, journal, keys) = (
            self.cache.clone(),
            self.journal.clone(),
            self.keys_by_tx.clone(),
        );
        Arc::new(move |lsn| {
            let executed = cache.state().executed.clone();
            let rows = journal.state();
            for (end, keys) in keys.iter().filter(|(end, _)| *end <= lsn) {
                for k in keys {
                    if !covered(&executed, k) {
                        return Some(format!(
                            "confirmed {lsn} before {k} (tx ending {end}) was unlinked"
                        ));
                    }
                    let journaled = rows.rows.values().any(|r| {
                        r.status == "completed"
                            && r.targets.iter().any(|t| match t {
                                Target::Key(x) => x == k,
                                Target::Pattern(p) => crate::glob::glob_match(p, k),
                                _ => false,
                            })
                    });
                    if !journaled {
                        return Some(format!(
                            "confirmed {lsn} before {k} (tx ending {end}) was journaled"
                        ));
                    }
                }
            }
            None
        })
    }

    fn pipeline(&self, stop: &ShutdownSender) -> Pipeline {
        let status = Arc::new(Status::default());
        let wake = Arc::new(tokio::sync::Notify::new());
        let trail = Trail::spawn(
            Box::new(self.journal.clone()),
            TrailLimits {
                window: Duration::from_millis(100),
                group_rows: 10,
                max_items: 4,
                max_backoff: Duration::from_millis(200),
            },
            status.clone(),
            wake.clone(),
        );
        let scans = Scans::spawn(
            Box::new(self.cache.clone()),
            Box::new(self.journal.clone()),
            status.clone(),
            wake.clone(),
            Duration::from_millis(200),
        );
        Pipeline {
            live: Arc::new(Live::new(rules(self.rules), plan::Context::default())),
            status,
            journal: Box::new(self.journal.clone()),
            targets: Targets::new(vec![Box::new(self.cache.clone())]),
            backoff: Backoff::new(Duration::from_millis(200)),
            shutdown: stop.subscribe(),
            followers: Followers::default(),
            prev_first_commit: None,
            trailing: Confirmations::new(trail, scans, wake),
        }
    }

    /// One life of the worker: recover, then stream until done or until `crash_after` of
    /// (virtual) time, when it is dropped wherever it is.
    async fn life(&self, per_batch: usize, crash_after: Option<Duration>) {
        let stop = ShutdownSender::new();
        let mut pipeline = self.pipeline(&stop);
        let mut source = MemorySource::new(self.log.clone(), per_batch, self.check());
        let run = async {
            pipeline.recover().await;
            pipeline.run(&mut source).await;
        };
        match crash_after {
            Some(d) => {
                let _ = tokio::time::timeout(d, run).await;
            }
            None => run.await,
        }
    }

    fn assert_all_done(&self) {
        let log = self.log.lock().unwrap();
        assert!(log.violations.is_empty(), "{:?}", log.violations);
        let last = log.transactions.last().map_or(Lsn(0), |t| t.end_lsn);
        assert_eq!(log.confirmed, last, "everything is confirmed in the end");
        let executed = self.cache.state().executed.clone();
        for (_, keys) in &self.keys_by_tx {
            for k in keys {
                assert!(covered(&executed, k), "{k} was unlinked");
            }
        }
        let rows = self.journal.state();
        assert!(
            rows.rows
                .values()
                .all(|r| r.status == "completed" || r.status == "failed"),
            "no journal row is left open"
        );
    }
}

/// Whether `key` was unlinked, exactly or by a pattern, according to the target's log.
fn covered(executed: &[String], key: &str) -> bool {
    executed.iter().any(|e| match e.split_once(':') {
        Some(("key", k)) => k == key,
        Some(("pattern", p)) => crate::glob::glob_match(p, key),
        _ => false,
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime")
}

#[test]
fn failures_hold_the_position_until_the_batch_is_done() {
    runtime().block_on(async {
        let world = World::new(&[vec![1, 2], vec![3], vec![1]]);
        world.cache.fail_next(3);
        world.journal.fail_next(2);
        world.life(2, None).await;
        world.assert_all_done();
        let log = world.log.lock().unwrap();
        // Confirmations trail the journal's groups: fewer than batches, in order, ending last.
        assert!(
            log.confirms.windows(2).all(|w| w[0] < w[1]),
            "{:?}",
            log.confirms
        );
        assert_eq!(log.confirms.last(), Some(&Lsn(30)));
        // Three cache failures and two journal failures: each retried the same batch.
        let failed = world
            .journal
            .state()
            .rows
            .values()
            .filter(|r| r.status == "failed")
            .count();
        assert!(failed >= 1, "a cache failure is journaled as failed");
    });
}

#[test]
fn a_crash_after_the_cache_and_before_the_journal_is_recovered() {
    runtime().block_on(async {
        let world = World::new(&[vec![1], vec![2]]);
        // The journal's completion fails forever in this life: the rows stay pending, the
        // position unconfirmed; then the process "dies".
        world.journal.fail_next(u32::MAX);
        world.life(1, Some(Duration::from_secs(5))).await;
        assert!(world.log.lock().unwrap().confirms.is_empty());
        world.journal.fail_next(0);
        world.life(1, None).await;
        world.assert_all_done();
    });
}

#[test]
fn the_cache_runs_ahead_of_a_journal_that_cannot_write_and_nothing_is_confirmed() {
    runtime().block_on(async {
        let world = World::new(&[vec![1], vec![2], vec![3], vec![4]]);
        // The journal refuses every write in this life: each batch's keys are still unlinked
        // at once (the next batch never waits for the previous one's journal), but no position
        // is confirmed, because none has its rows durable.
        world.journal.state().refuse_groups = true;
        world.life(1, Some(Duration::from_secs(5))).await;
        let executed = world.cache.state().executed.clone();
        for k in ["t:1", "t:2", "t:3", "t:4"] {
            assert!(
                covered(&executed, k),
                "{k} unlinked ahead of the journal: {executed:?}"
            );
        }
        assert!(world.log.lock().unwrap().confirms.is_empty());
        // The next life replays and journals everything.
        world.journal.state().refuse_groups = false;
        world.life(1, None).await;
        world.assert_all_done();
    });
}

#[test]
fn patterns_run_beside_the_stream_and_hold_only_the_confirmation() {
    runtime().block_on(async {
        let mut world = World::new(&[vec![1], vec![2], vec![3]]);
        world.rules =
            "[[rule]]\nname = 't'\ntable = 'public.t'\nkeys = ['t:{id}']\npatterns = ['list:*']\n";
        // The keyspace pass cannot finish in this life: every batch's exact key is unlinked
        // all the same (nothing waits for the pass), and no position is confirmed (each
        // needs the pass that covers it).
        world.cache.state().refuse_patterns = true;
        world.life(1, Some(Duration::from_secs(5))).await;
        let executed = world.cache.state().executed.clone();
        for k in ["t:1", "t:2", "t:3"] {
            assert!(
                covered(&executed, k),
                "{k} unlinked beside the pass: {executed:?}"
            );
        }
        assert!(!executed.iter().any(|e| e.starts_with("pattern:")));
        assert!(world.log.lock().unwrap().confirms.is_empty());
        // The replay's requests queue while the first pass cannot finish; once it can, the
        // queued ones coalesce into one pass: fewer passes than batches.
        let before = world.cache.state().executed.len();
        let cache = world.cache.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            cache.state().refuse_patterns = false;
        });
        world.life(1, None).await;
        world.assert_all_done();
        let passes = world
            .cache
            .state()
            .executed
            .iter()
            .skip(before)
            .filter(|e| *e == "pattern:list:*")
            .count();
        assert!((1..3).contains(&passes), "{passes} passes for 3 batches");
        let journaled =
            world.journal.state().rows.values().any(|r| {
                r.status == "completed" && r.targets == [Target::Pattern("list:*".into())]
            });
        assert!(journaled, "the pass is journaled once it is done");
    });
}

#[test]
fn dead_letters_are_kept_and_answered_with_whole_families_before_the_position_passes() {
    runtime().block_on(async {
        let world = World::new(&[vec![1], vec![2], vec![3]]);
        {
            let mut log = world.log.lock().unwrap();
            // The source could not place a message: it delivers a dead letter and a
            // conservative transaction whose change is undecodable, of an unknown relation.
            let poisoned = &mut log.transactions[1];
            poisoned.changes[0].undecodable = Some("garbage".into());
            poisoned.changes[0].relation = Arc::new(Relation {
                schema: String::new(),
                ..(*poisoned.changes[0].relation).clone()
            });
            log.dead_letters.push((
                1,
                crate::source::DeadLetter {
                    source: "memory",
                    position: "0/F".into(),
                    kafka: None,
                    payload: vec![0xde, 0xad],
                    error: "garbage".into(),
                },
            ));
        }
        world.journal.fail_next(1);
        world.life(1, None).await;
        assert_eq!(world.journal.state().dead_letters.len(), 1);
        assert!(
            world
                .cache
                .state()
                .executed
                .contains(&"pattern:t:*".to_string()),
            "every rule's whole family: {:?}",
            world.cache.state().executed
        );
        let log = world.log.lock().unwrap();
        assert!(log.violations.is_empty(), "{:?}", log.violations);
        assert_eq!(log.confirmed, Lsn(30));
    });
}

#[derive(Debug, Clone)]
struct Life {
    cache_failures: u32,
    journal_failures: u32,
    stream_failures: u32,
    crash_after_ms: u64,
}

fn life() -> impl Strategy<Value = Life> {
    (0u32..4, 0u32..4, 0u32..3, 1u64..400).prop_map(|(c, j, s, ms)| Life {
        cache_failures: c,
        journal_failures: j,
        stream_failures: s,
        crash_after_ms: ms,
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Whatever the interleaving of batches, failures and crashes, a confirmed position never
    /// passes an action that has not completed and been journaled; and once the failures stop,
    /// everything is invalidated, journaled and confirmed.
    #[test]
    fn confirmation_never_passes_unfinished_work(
        txs in proptest::collection::vec(proptest::collection::vec(0u8..12, 1..4), 1..25),
        per_batch in 1usize..6,
        lives in proptest::collection::vec(life(), 0..5),
    ) {
        runtime().block_on(async {
            let world = World::new(&txs);
            for l in &lives {
                world.cache.fail_next(l.cache_failures);
                world.journal.fail_next(l.journal_failures);
                world.log.lock().unwrap().fail_next = l.stream_failures;
                world.life(per_batch, Some(Duration::from_millis(l.crash_after_ms))).await;
            }
            world.cache.fail_next(0);
            world.journal.fail_next(0);
            world.log.lock().unwrap().fail_next = 0;
            world.life(per_batch, None).await;
            world.assert_all_done();
        });
    }
}
