//! Which Kafka offsets may be committed: the assignment, and the positions the worker confirms.
//!
//! A [`Position`](crate::source::Position) of the Kafka source lists, for every partition this
//! worker has consumed from, the next offset to read. Positions are cumulative — each holds
//! every partition, not only those of its batch — because the worker confirms only the newest
//! position whose work is done and skips the ones before it.
//!
//! Partitions move between the members of a consumer group. Each assignment of a partition
//! gets a new epoch; a position remembers the epoch its offsets were read under, and
//! [`Assignment::confirm`] drops the offsets of partitions that were revoked (or revoked
//! and assigned again) since: after a revocation the new owner resumes from the last commit,
//! and a late commit from this worker must never move that back or forward. On revocation the
//! offsets already confirmed are committed at once ([`Assignment::revoke`] returns them);
//! work read but not yet confirmed is abandoned to the new owner, which replays it
//! (invalidations are idempotent). Pure: the consumer does the I/O.

use std::collections::{BTreeMap, HashMap};

/// A partition of a topic.
pub type Partition = (String, i32);

/// The next offset to read of one partition, and the assignment epoch it was read under.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PartitionOffset {
    pub topic: String,
    pub partition: i32,
    pub next: i64,
    pub epoch: u64,
}

/// The current assignment and what has been confirmed and committed.
#[derive(Debug, Default)]
pub struct Assignment {
    /// Assigned partitions and their epoch.
    assigned: HashMap<Partition, u64>,
    next_epoch: u64,
    /// Confirmed next offsets (done and journaled), by partition.
    confirmed: HashMap<Partition, i64>,
    /// What was last committed (or handed to the consumer to commit).
    committed: HashMap<Partition, i64>,
}

impl Assignment {
    /// Partitions were assigned: each gets a new epoch.
    pub fn assign(&mut self, partitions: impl IntoIterator<Item = Partition>) {
        for p in partitions {
            self.next_epoch += 1;
            self.assigned.insert(p, self.next_epoch);
        }
    }

    /// Partitions are being revoked: returns their confirmed offsets, to commit synchronously
    /// before they go (an asynchronous commit of them may still be in flight). Anything read
    /// but not confirmed is abandoned.
    pub fn revoke(
        &mut self,
        partitions: impl IntoIterator<Item = Partition>,
    ) -> Vec<(Partition, i64)> {
        let mut out = Vec::new();
        for p in partitions {
            self.assigned.remove(&p);
            if let Some(next) = self.confirmed.remove(&p) {
                out.push((p.clone(), next));
            }
            self.committed.remove(&p);
        }
        out
    }

    /// The epoch of an assigned partition.
    pub fn epoch(&self, p: &Partition) -> Option<u64> {
        self.assigned.get(p).copied()
    }

    /// Records a confirmed position (only partitions still assigned under the same epoch).
    pub fn confirm(&mut self, position: &[PartitionOffset]) {
        for o in position {
            let p = (o.topic.clone(), o.partition);
            if self.assigned.get(&p) != Some(&o.epoch) {
                continue;
            }
            let c = self.confirmed.entry(p).or_insert(o.next);
            *c = (*c).max(o.next);
        }
    }

    /// Whether a confirmed offset has moved since it was last committed.
    pub fn has_uncommitted(&self) -> bool {
        self.confirmed
            .iter()
            .any(|(p, next)| self.committed.get(p) != Some(next))
    }

    /// The offsets to commit now (confirmed ones that moved since their last commit), marked
    /// committed.
    pub fn uncommitted(&mut self) -> Vec<(Partition, i64)> {
        let mut out = Vec::new();
        for (p, next) in &self.confirmed {
            if self.committed.get(p) != Some(next) {
                self.committed.insert(p.clone(), *next);
                out.push((p.clone(), *next));
            }
        }
        out.sort();
        out
    }

    pub fn all_confirmed(&self) -> Vec<(Partition, i64)> {
        self.confirmed
            .iter()
            .map(|(p, n)| (p.clone(), *n))
            .collect()
    }

    /// Assigned partitions, for `/status`.
    pub fn assigned(&self) -> BTreeMap<Partition, Option<i64>> {
        self.assigned
            .keys()
            .map(|p| (p.clone(), self.confirmed.get(p).copied()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(n: i32) -> Partition {
        ("t".into(), n)
    }

    /// Confirms a position and takes what is then to commit, as the source does when a
    /// commit is due.
    fn committable(a: &mut Assignment, position: &[PartitionOffset]) -> Vec<(Partition, i64)> {
        a.confirm(position);
        a.uncommitted()
    }

    fn at(n: i32, next: i64, epoch: u64) -> PartitionOffset {
        PartitionOffset {
            topic: "t".into(),
            partition: n,
            next,
            epoch,
        }
    }

    #[test]
    fn commits_only_what_moved_under_the_current_assignment() {
        let mut a = Assignment::default();
        a.assign([p(0), p(1)]);
        let (e0, e1) = (a.epoch(&p(0)).unwrap(), a.epoch(&p(1)).unwrap());
        assert_eq!(
            committable(&mut a, &[at(0, 5, e0), at(1, 3, e1)]),
            vec![(p(0), 5), (p(1), 3)]
        );
        // Nothing moved on 1.
        assert_eq!(
            committable(&mut a, &[at(0, 9, e0), at(1, 3, e1)]),
            vec![(p(0), 9)]
        );
        // Never backwards.
        assert_eq!(committable(&mut a, &[at(0, 7, e0)]), vec![]);
    }

    #[test]
    fn revoked_partitions_keep_what_was_confirmed_and_drop_late_positions() {
        let mut a = Assignment::default();
        a.assign([p(0)]);
        let e = a.epoch(&p(0)).unwrap();
        committable(&mut a, &[at(0, 5, e)]);
        // What was confirmed is committed (again, synchronously) on revoke.
        assert_eq!(a.revoke([p(0)]), vec![(p(0), 5)]);
        a.assign([p(0)]);
        let e2 = a.epoch(&p(0)).unwrap();
        assert_ne!(e, e2);
        // A position read under the old assignment is not committed now.
        assert_eq!(committable(&mut a, &[at(0, 50, e)]), vec![]);
        assert_eq!(committable(&mut a, &[at(0, 6, e2)]), vec![(p(0), 6)]);
        assert_eq!(a.revoke([p(0)]), vec![(p(0), 6)]);
        assert!(a.assigned().is_empty());
    }

    #[test]
    fn confirmations_gather_until_the_next_commit() {
        let mut a = Assignment::default();
        a.assign([p(0), p(1)]);
        let (e0, e1) = (a.epoch(&p(0)).unwrap(), a.epoch(&p(1)).unwrap());
        assert!(!a.has_uncommitted());
        a.confirm(&[at(0, 2, e0)]);
        a.confirm(&[at(0, 4, e0), at(1, 1, e1)]);
        a.confirm(&[at(0, 3, e0)]);
        assert!(a.has_uncommitted());
        assert_eq!(a.uncommitted(), vec![(p(0), 4), (p(1), 1)]);
        assert!(!a.has_uncommitted());
        assert_eq!(a.uncommitted(), vec![]);
        // Revocation returns the confirmed offset whether or not it was committed yet.
        a.confirm(&[at(1, 7, e1)]);
        assert_eq!(a.revoke([p(1)]), vec![(p(1), 7)]);
        assert!(!a.has_uncommitted());
    }
}
