//! Patterns that join a running keyspace pass, ahead of the pass that covers them.
//!
//! A pattern requested while a pass runs waits for the next pass: only a pass that starts
//! after a change's commit is sure to meet every key (SCAN's full-iteration guarantee), so
//! only that pass covers the change and lets its position be confirmed. Waiting for it alone
//! puts a key's invalidation at the rest of the running pass plus the key's place in the next
//! one: up to two passes, 1.86 at p99. The running pass reads the rest of the keyspace anyway,
//! so the scanner offers each newcomer to it ([`Early::offer`]) and the pass also unlinks
//! what the newcomer matches from then on ([`Early::take`], read before each page). A key
//! the running pass has not reached goes within the rest of this pass, a key it has passed
//! goes as the next pass reaches it again: under a pass in SCAN's order, within about one
//! pass either way.
//!
//! Nothing here is relied on for correctness: SCAN's order between passes is not
//! documented (a rehash reorders it), and the next pass still runs the newcomer whole. An
//! unlink after the change's commit only invalidates, so a key unlinked early is never
//! wrong. Joining widens the running pass's server-side `MATCH` to what every pattern shares,
//! which changes nothing of what its cursor visits: Redis applies `MATCH` to the elements a
//! call retrieved, just before replying.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Patterns requested since the running pass started; shared by the stream, which offers
/// them, and the pass, which takes them.
#[derive(Debug, Default)]
pub struct Early {
    patterns: Mutex<Vec<String>>,
    /// How many `patterns` holds: read before each page without taking the lock.
    len: AtomicUsize,
}

impl Early {
    /// Offers patterns requested now to the running pass.
    pub fn offer<'a>(&self, patterns: impl IntoIterator<Item = &'a str>) {
        let mut held = self.patterns.lock().unwrap_or_else(|e| e.into_inner());
        held.extend(patterns.into_iter().map(str::to_owned));
        self.len.store(held.len(), Ordering::Release);
    }

    /// Appends to `into` the patterns offered since `taken` of them were taken, and moves
    /// `taken` on; true if there were any. Cheap when there are none.
    pub fn take(&self, taken: &mut usize, into: &mut Vec<String>) -> bool {
        if self.len.load(Ordering::Acquire) <= *taken {
            return false;
        }
        let held = self.patterns.lock().unwrap_or_else(|e| e.into_inner());
        let new = held.get(*taken..).unwrap_or_default();
        into.extend_from_slice(new);
        *taken = held.len();
        !new.is_empty()
    }

    /// A new pass starts: it covers what was requested before it, so nothing offered so far
    /// needs to join it. Called by the scanner before it gathers the pass's requests (a
    /// pattern offered in between may then both join and be covered: harmless).
    pub fn clear(&self) {
        let mut held = self.patterns.lock().unwrap_or_else(|e| e.into_inner());
        held.clear();
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
        early.offer(["c:*"]);
        assert!(early.take(&mut taken, &mut joined));
        assert_eq!(joined, ["a:*", "b:*", "c:*"]);

        early.clear();
        let (mut taken, mut joined) = (0, Vec::new());
        assert!(!early.take(&mut taken, &mut joined));
        early.offer(["d:*"]);
        assert!(early.take(&mut taken, &mut joined));
        assert_eq!(joined, ["d:*"]);
    }
}
