//! Exact keys before keyspace passes, on the cache server itself.
//!
//! Redis runs one command at a time. A keyspace pass (a pattern, a tag or bump pattern) is
//! thousands of `SCAN` pages sent back to back; a batch of exact keys that arrives while a page
//! runs waits for it, and on a busy machine the pages also take the CPU the stream's round trip
//! needs. [`Priority`] lets the stream say when it has a batch in flight ([`Priority::urgent`],
//! held while the batch's commands run) and lets a pass hold its next page meanwhile
//! ([`Priority::defer`]). The wait is bounded per page ([`DEFER_AT_MOST`]) and, by the Redis
//! target, per pass (a quarter of the time the pass works), so a saturated stream stretches
//! passes by a fifth at most and never stops them. Nothing here changes what a pass covers or
//! the order of confirmations: only when the pass's next page is sent (and so, by that
//! stretch at most, when positions waiting on the pass are confirmed). Only the scanner's
//! target defers: delayed passes and operator requests run as before.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

/// The longest a pass holds one page back for the stream.
pub const DEFER_AT_MOST: Duration = Duration::from_millis(2);

/// Whether the stream has cache commands in flight; shared by the stream and the passes.
#[derive(Debug, Default)]
pub struct Priority {
    busy: AtomicUsize,
    idle: Notify,
}

/// Held while urgent commands run; dropping it lets deferred pages go.
#[derive(Debug)]
pub struct Urgent<'a>(&'a Priority);

impl Priority {
    /// Marks urgent commands in flight until the guard is dropped.
    pub fn urgent(&self) -> Urgent<'_> {
        self.busy.fetch_add(1, Ordering::AcqRel);
        Urgent(self)
    }

    /// Whether urgent commands are in flight now.
    pub fn is_urgent(&self) -> bool {
        self.busy.load(Ordering::Acquire) > 0
    }

    /// Returns once no urgent commands are in flight, or after `limit`.
    pub async fn defer(&self, limit: Duration) {
        let idle = self.idle.notified();
        tokio::pin!(idle);
        // Registered before the check, so a guard dropped in between still wakes it.
        idle.as_mut().enable();
        if self.busy.load(Ordering::Acquire) == 0 {
            return;
        }
        let _ = tokio::time::timeout(limit, idle).await;
    }
}

impl Drop for Urgent<'_> {
    fn drop(&mut self) {
        if self.0.busy.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tokio::time::Instant;

    #[tokio::test]
    async fn nothing_urgent_means_no_wait() {
        let p = Priority::default();
        let t = Instant::now();
        p.defer(Duration::from_secs(5)).await;
        assert!(t.elapsed() < Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_page_waits_for_the_urgent_commands_then_goes() {
        let p = Arc::new(Priority::default());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let holder = tokio::spawn({
            let p = p.clone();
            async move {
                let _urgent = p.urgent();
                let _ = rx.await;
            }
        });
        tokio::task::yield_now().await;
        let deferred = tokio::spawn({
            let p = p.clone();
            async move {
                let t = Instant::now();
                p.defer(Duration::from_secs(60)).await;
                t.elapsed()
            }
        });
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(
            !deferred.is_finished(),
            "went while urgent work was in flight"
        );
        tx.send(()).unwrap();
        holder.await.unwrap();
        let waited = deferred.await.unwrap();
        assert!(waited >= Duration::from_secs(10) && waited < Duration::from_secs(60));
    }

    #[tokio::test(start_paused = true)]
    async fn a_page_waits_at_most_the_limit() {
        let p = Priority::default();
        let _urgent = p.urgent();
        let _also = p.urgent();
        let t = Instant::now();
        p.defer(Duration::from_millis(2)).await;
        assert_eq!(t.elapsed(), Duration::from_millis(2));
    }

    #[tokio::test(start_paused = true)]
    async fn only_the_last_guard_releases() {
        let p = Priority::default();
        let a = p.urgent();
        let b = p.urgent();
        drop(a);
        assert!(p.is_urgent());
        let t = Instant::now();
        p.defer(Duration::from_millis(5)).await;
        assert_eq!(
            t.elapsed(),
            Duration::from_millis(5),
            "one guard still held"
        );
        drop(b);
        assert!(!p.is_urgent());
        let t = Instant::now();
        p.defer(Duration::from_millis(5)).await;
        assert_eq!(t.elapsed(), Duration::ZERO);
    }
}
