//! Misses and evictions per rule, from Redis keyspace notifications, when `[monitor]
//! keyspace_events = true` (default false).
//!
//! Redis counts misses and evictions only server-wide. Per key they are visible as key-event
//! notifications (`__keyevent@<db>__:keymiss`, `__keyevent@<db>__:evicted`), which Redis
//! publishes only when `notify-keyspace-events` asks for them — a server-wide setting, so the
//! worker changes it only when told to: it adds the flags `E` (key-event channels), `m`
//! (key misses) and `e` (evictions) to whatever the server has, and adds them again after a
//! reconnect (a restarted server forgot them). Each notification's key is matched against the
//! rules' key families ([`super::families`]) and counted for every rule whose family it is in.
//!
//! Pub/sub delivers at most once: the counts of an interval are exact only if the subscription
//! held for all of it. [`EventTally::take`] says whether it did; an interval it did not cover
//! gets NULL, not a partial count.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;

use super::families::Families;
use crate::config::Config;
use crate::control::Live;
use crate::runtime::Shutdown;

/// The flags the worker needs in `notify-keyspace-events`.
const FLAGS: [char; 3] = ['E', 'm', 'e'];

/// Per-rule misses and evictions since the last sample.
#[derive(Debug, Default)]
pub struct EventTally {
    /// Subscribed now.
    subscribed: bool,
    /// Subscribed without a break since the last [`EventTally::take`].
    whole_interval: bool,
    /// Rule name → (misses, evictions).
    counts: BTreeMap<String, (u64, u64)>,
}

/// An interval's per-rule counts, when they are exact.
pub type Counts = Option<BTreeMap<String, (u64, u64)>>;

impl EventTally {
    /// The counts since the last take, or `None` when the subscription did not hold for the
    /// whole interval; starts the next interval.
    pub fn take(&mut self) -> Counts {
        let counts = std::mem::take(&mut self.counts);
        let exact = self.whole_interval && self.subscribed;
        self.whole_interval = self.subscribed;
        exact.then_some(counts)
    }

    fn subscribed(&mut self, now: bool) {
        self.subscribed = now;
        if !now {
            self.whole_interval = false;
        }
    }
}

/// The shared tally: the subscriber counts, the `cache_metrics` sampler takes.
pub type SharedTally = Arc<Mutex<EventTally>>;

fn lock(t: &SharedTally) -> std::sync::MutexGuard<'_, EventTally> {
    t.lock().unwrap_or_else(|p| p.into_inner())
}

/// `current` with the worker's flags added (Redis' flag letters; `A` already covers `e` but
/// not `m`). Pure.
pub fn with_flags(current: &str) -> String {
    let mut out = current.to_string();
    for f in FLAGS {
        let covered = out.contains(f) || (f == 'e' && out.contains('A'));
        if !covered {
            out.push(f);
        }
    }
    out
}

/// Runs until shutdown (not at all unless `[monitor] keyspace_events`).
pub async fn run(config: Config, live: Arc<Live>, tally: SharedTally, mut shutdown: Shutdown) {
    if !config.monitor.keyspace_events {
        return;
    }
    let mut backoff = Duration::from_millis(100);
    loop {
        let r = tokio::select! {
            r = subscribe(&config, &live, &tally) => r,
            _ = shutdown.recv() => return,
        };
        lock(&tally).subscribed(false);
        if let Err(e) = r {
            tracing::warn!(error = %e, "keyspace notifications: subscription lost; per-rule misses and evictions are NULL until it holds for a whole interval");
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.recv() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Adds the worker's flags to the server's `notify-keyspace-events`; `(before, now)` when it
/// changed it.
async fn enable(
    c: &mut redis::aio::MultiplexedConnection,
) -> Result<Option<(String, String)>, redis::RedisError> {
    let current: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("notify-keyspace-events")
        .query_async(c)
        .await?;
    let current = current.get(1).cloned().unwrap_or_default();
    let wanted = with_flags(&current);
    if wanted == current {
        return Ok(None);
    }
    let () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("notify-keyspace-events")
        .arg(&wanted)
        .query_async(c)
        .await?;
    Ok(Some((current, wanted)))
}

/// Enables the notifications, subscribes and counts until the connection ends.
async fn subscribe(
    config: &Config,
    live: &Live,
    tally: &SharedTally,
) -> Result<(), redis::RedisError> {
    let client =
        crate::target::redis::client(&config.redis).map_err(crate::target::redis::into_redis)?;
    let db = client.get_connection_info().redis_settings().db();
    let mut c = client.get_multiplexed_async_connection().await?;
    // Managed Redis often refuses CONFIG: then the flags must come from the service's
    // parameters (notify-keyspace-events containing E, m and e), and the worker subscribes.
    match enable(&mut c).await {
        Ok(Some((before, now))) => {
            tracing::info!(before = %before, now = %now, "keyspace notifications: enabled key misses and evictions ([monitor] keyspace_events)");
        }
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(error = %e, "keyspace notifications: cannot set notify-keyspace-events (CONFIG refused); subscribing anyway — set it to include E, m and e in the server's parameters");
        }
    }
    let mut pubsub = client.get_async_pubsub().await?;
    let miss = format!("__keyevent@{db}__:keymiss");
    let evicted = format!("__keyevent@{db}__:evicted");
    pubsub.subscribe(&miss).await?;
    pubsub.subscribe(&evicted).await?;
    lock(tally).subscribed(true);
    let mut messages = pubsub.into_on_message();
    // The families of the rules in force, rebuilt when a reload or a switch replaces them.
    let mut families: Option<(crate::control::Snapshot, Families)> = None;
    while let Some(msg) = messages.next().await {
        let Ok(key) = msg.get_payload::<String>() else {
            continue;
        };
        let snap = live.snapshot();
        let current = match &families {
            Some((s, f)) if Arc::ptr_eq(&s.rules, &snap.rules) && Arc::ptr_eq(&s.cx, &snap.cx) => f,
            _ => {
                let f = Families::of(
                    snap.rules
                        .rules
                        .iter()
                        .filter(|r| !snap.cx.disabled.contains(&r.name)),
                    &snap.cx.key_prefix,
                );
                &families.insert((snap, f)).1
            }
        };
        let is_miss = msg.get_channel_name() == miss;
        let mut t = lock(tally);
        for i in current.matching(&key) {
            let rule = current.rule(i);
            let entry = match t.counts.get_mut(rule) {
                Some(e) => e,
                None => t.counts.entry(rule.to_string()).or_default(),
            };
            if is_miss {
                entry.0 += 1;
            } else {
                entry.1 += 1;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_are_added_to_what_the_server_has() {
        assert_eq!(with_flags(""), "Eme");
        assert_eq!(with_flags("Kx"), "KxEme");
        assert_eq!(with_flags("AKE"), "AKEm");
        assert_eq!(with_flags("Eme"), "Eme");
    }

    #[test]
    fn an_interval_counts_only_when_the_subscription_held_throughout() {
        let mut t = EventTally::default();
        t.subscribed(true);
        t.counts.insert("r".into(), (1, 0));
        // Subscribed during the interval, not for all of it.
        assert_eq!(t.take(), None);
        t.counts.insert("r".into(), (2, 1));
        assert_eq!(t.take(), Some(BTreeMap::from([("r".to_string(), (2, 1))])));
        t.counts.insert("r".into(), (5, 0));
        t.subscribed(false);
        t.subscribed(true);
        assert_eq!(t.take(), None, "a break loses notifications");
        assert_eq!(t.take(), Some(BTreeMap::new()));
    }
}
