//! Patterns that join a running keyspace pass, ahead of the pass that covers them.
//!
//! A pattern requested while a pass runs waits for the next pass: only a pass that starts
//! after a change's commit is sure to meet every key (SCAN's full-iteration guarantee), so
//! only that pass covers the change and lets its position be confirmed. Waiting for it alone
//! puts a key's invalidation at the rest of the running pass plus the key's place in the next
//! one: up to two passes (1.86 at p99 if passes were all alike; 1.8–2.0 measured). The running
//! pass reads the rest of the keyspace anyway, so the scanner offers each newcomer to it
//! ([`Early::offer`]) and, while the pass unlinks patterns, it also unlinks what the newcomer
//! matches from then on ([`Early::take`], read before each page). A key the running pass has
//! not reached goes when the pass reaches it, a key it has passed goes when the next pass
//! reaches it again: with passes all alike and SCAN's order unchanged, within one pass either
//! way (1.0–1.4 of the worker's own passes at p99, measured: passes differ in length).
//!
//! Coverage never depends on this: SCAN's order between passes is not documented (a rehash
//! reorders it), and the next pass still runs the newcomer whole. An unlink after the
//! change's commit only invalidates, so a key unlinked early is never wrong. Nor can a join
//! cost the running pass any key of its own patterns: joining widens the pass's server-side
//! `MATCH` to what every pattern shares, which changes nothing of what its cursor visits
//! (Redis applies `MATCH` to the elements a call retrieved, just before replying), and the
//! pass then matches its own patterns exactly as Redis would
//! ([`crate::glob::glob_match_bytes`], property-tested against a real Redis) on keys read as
//! bytes. The Redis target bounds what joins a pass (how many, and none that would widen the
//! server's filter to every key); the rest only wait for their own pass.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// At most this many distinct patterns wait to join the running pass; later ones only wait for
/// the next pass (which covers them either way).
const HELD_AT_MOST: usize = 4096;

/// Patterns requested since the running pass started; shared by the stream, which offers
/// them, and the pass, which takes them.
#[derive(Debug, Default)]
pub struct Early {
    held: Mutex<Held>,
    /// How many patterns `held` has: read before each page without taking the lock.
    len: AtomicUsize,
}

#[derive(Debug, Default)]
struct Held {
    patterns: Vec<String>,
    seen: HashSet<String>,
}

impl Early {
    fn lock(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Offers patterns requested now to the running pass (each distinct pattern once).
    pub fn offer<'a>(&self, patterns: impl IntoIterator<Item = &'a str>) {
        let mut held = self.lock();
        for p in patterns {
            if held.patterns.len() >= HELD_AT_MOST {
                break;
            }
            if !held.seen.contains(p) {
                held.seen.insert(p.to_owned());
                held.patterns.push(p.to_owned());
            }
        }
        self.len.store(held.patterns.len(), Ordering::Release);
    }

    /// Appends to `into` the patterns offered since `taken` of them were taken, and moves
    /// `taken` on; true if there were any. Cheap when there are none.
    pub fn take(&self, taken: &mut usize, into: &mut Vec<String>) -> bool {
        if self.len.load(Ordering::Acquire) <= *taken {
            return false;
        }
        let held = self.lock();
        let new = held.patterns.get(*taken..).unwrap_or_default();
        into.extend_from_slice(new);
        *taken = held.patterns.len();
        !new.is_empty()
    }

    /// A new pass starts: it covers what was requested before it, so nothing offered so far
    /// needs to join it. Called by the scanner before it gathers the pass's requests (a
    /// pattern offered in between may then both join and be covered: harmless).
    pub fn clear(&self) {
        let mut held = self.lock();
        held.patterns.clear();
        held.seen.clear();
        self.len.store(0, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::Early;

    #[test]
    fn a_pass_takes_each_offered_pattern_once_and_a_new_pass_starts_empty() {
        let early = Early::default();
        let (mut taken, mut joined) = (0, Vec::new());
        assert!(!early.take(&mut taken, &mut joined));
        early.offer(["a:*", "b:*"]);
        assert!(early.take(&mut taken, &mut joined));
        assert!(!early.take(&mut taken, &mut joined), "nothing new");
        early.offer(["c:*", "a:*", "c:*"]);
        assert!(early.take(&mut taken, &mut joined));
        assert_eq!(joined, ["a:*", "b:*", "c:*"], "each distinct pattern once");

        early.clear();
        let (mut taken, mut joined) = (0, Vec::new());
        assert!(!early.take(&mut taken, &mut joined));
        early.offer(["d:*"]);
        assert!(early.take(&mut taken, &mut joined));
        assert_eq!(joined, ["d:*"]);
    }
}
