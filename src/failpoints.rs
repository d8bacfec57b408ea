//! Named fault-injection points where a crash matters most, for the fault-injection tests.
//!
//! Compiled in only with the `failpoints` cargo feature (off by default: a release build has
//! no trace of them). With the feature, `CACHEWARDEN_FAILPOINT=<name>` makes the process abort
//! — as abruptly as `SIGKILL`: no destructor, no flush, no status update — the first time it
//! reaches that point, or the N-th time with `<name>@N`. Tests start the worker that way, let
//! it die exactly there, restart it normally and prove that nothing was lost.

/// After the cache targets executed a batch's actions, before their journal rows are
/// `completed` (and so before any confirmation).
pub const AFTER_CACHE_BEFORE_JOURNAL: &str = "after-cache-before-journal";
/// After a batch's journal rows are `completed`, before its position is confirmed.
pub const AFTER_JOURNAL_BEFORE_CONFIRM: &str = "after-journal-before-confirm";
/// Between two chunks of a transaction too large for one batch.
pub const BETWEEN_CHUNKS: &str = "between-chunks";

#[cfg(feature = "failpoints")]
mod imp {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;

    /// `(name, hit number)` from the environment, read once.
    fn armed() -> Option<&'static (String, u64)> {
        static ARMED: OnceLock<Option<(String, u64)>> = OnceLock::new();
        ARMED
            .get_or_init(|| {
                let v = std::env::var("CACHEWARDEN_FAILPOINT").ok()?;
                Some(match v.split_once('@') {
                    Some((name, n)) => (name.to_string(), n.parse().unwrap_or(1)),
                    None => (v, 1),
                })
            })
            .as_ref()
    }

    pub fn hit(name: &str) {
        static HITS: AtomicU64 = AtomicU64::new(0);
        if let Some((armed, at)) = armed() {
            if armed == name && HITS.fetch_add(1, Ordering::SeqCst) + 1 == *at {
                eprintln!("failpoint {name}: aborting");
                std::process::abort();
            }
        }
    }
}

/// Aborts the process here if this failpoint is armed (only with the `failpoints` feature).
#[inline(always)]
pub fn hit(name: &str) {
    #[cfg(feature = "failpoints")]
    imp::hit(name);
    #[cfg(not(feature = "failpoints"))]
    let _ = name;
}
