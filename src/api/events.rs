//! `/api/v1/events`: server-sent events for live views. Event names: `invalidation` (a new
//! `cache_invalidations` row), `health` (readiness and its reasons changed), `rules` (rules
//! reloaded, switched or drifted) and `config` (a `cache_configs` change through the API).
//!
//! One watch task serves every subscriber: while anyone listens it looks once a second (and at
//! once after an API invalidation) for journal rows created since the last look and for changes
//! of readiness and rules; with no subscriber it does not query at all. A subscriber that falls
//! behind skips what it missed (the views page the journal for history).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use chrono::{DateTime, Utc};
use futures_util::Stream;
use serde::Serialize;
use tokio::sync::{broadcast, Notify};
use utoipa::ToSchema;

use super::configs::ConfigView;
use super::health::Readiness;
use super::invalidations::Invalidation;
use super::Ctx;
pub use crate::status::RulesState;

/// How often the watch looks while someone listens.
const LOOK_EVERY: Duration = Duration::from_secs(1);
/// Journal rows sent per look at most.
const MAX_ROWS: i64 = 200;
/// Rows may become visible out of `created_at` order (concurrent commits): each look reaches
/// back this far and skips the ids it sent already.
const OVERLAP: Duration = Duration::from_secs(5);

/// One event.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(tag = "type", content = "data", rename_all = "lowercase")]
pub enum Event {
    Invalidation(Invalidation),
    Health(Readiness),
    Rules(RulesState),
    Config(ConfigView),
}

impl Event {
    fn name(&self) -> &'static str {
        match self {
            Event::Invalidation(_) => "invalidation",
            Event::Health(_) => "health",
            Event::Rules(_) => "rules",
            Event::Config(_) => "config",
        }
    }
}

/// The subscribers' channel and the watch's wake-up.
pub struct Hub {
    tx: broadcast::Sender<Event>,
    wake: Notify,
}

impl Default for Hub {
    fn default() -> Self {
        Hub {
            tx: broadcast::channel(1024).0,
            wake: Notify::new(),
        }
    }
}

impl Hub {
    /// Sends to every subscriber (none listening is fine).
    pub fn send(&self, e: Event) {
        let _ = self.tx.send(e);
    }

    /// Asks the watch to look at the journal now.
    pub fn notify_journal(&self) {
        self.wake.notify_one();
    }
}

fn readiness(ctx: &Ctx) -> Readiness {
    let reasons = ctx.status.not_ready_reasons();
    Readiness {
        ready: reasons.is_empty(),
        reasons,
    }
}

/// Starts the watch (it ends when the API's state is dropped).
pub fn spawn_watch(ctx: Arc<Ctx>) {
    let weak = Arc::downgrade(&ctx);
    drop(ctx);
    tokio::spawn(async move {
        let mut last_health: Option<Readiness> = None;
        let mut last_rules: Option<RulesState> = None;
        let mut since: Option<DateTime<Utc>> = None;
        let mut sent: VecDeque<(DateTime<Utc>, String)> = VecDeque::new();
        loop {
            let Some(ctx) = weak.upgrade() else { return };
            if ctx.events.tx.receiver_count() == 0 {
                // Nobody listens: forget, so a new subscriber starts from now.
                (last_health, last_rules, since) = (None, None, None);
                sent.clear();
            } else {
                let h = readiness(&ctx);
                if last_health.as_ref() != Some(&h) {
                    ctx.events.send(Event::Health(h.clone()));
                    last_health = Some(h);
                }
                let r = ctx.status.rules_state();
                if last_rules.as_ref() != Some(&r) {
                    ctx.events.send(Event::Rules(r.clone()));
                    last_rules = Some(r);
                }
                let from = *since.get_or_insert_with(Utc::now);
                if let Ok(client) = ctx.db().await {
                    let q = format!(
                        "SELECT {}, created_at FROM cache_invalidations WHERE created_at >= $1 \
                         ORDER BY created_at, id LIMIT $2",
                        super::invalidations::COLUMNS
                    );
                    let back = from - chrono::Duration::from_std(OVERLAP).unwrap_or_default();
                    if let Ok(rows) = client.query(&q, &[&back, &MAX_ROWS]).await {
                        for row in &rows {
                            let inv = super::invalidations::from_row(row);
                            let created: DateTime<Utc> = row.get(13);
                            if sent.iter().any(|(_, id)| *id == inv.id) {
                                continue;
                            }
                            sent.push_back((created, inv.id.clone()));
                            since = Some(since.map_or(created, |s| s.max(created)));
                            ctx.events.send(Event::Invalidation(inv));
                        }
                    }
                    let horizon = since.unwrap_or(from)
                        - chrono::Duration::from_std(OVERLAP * 2).unwrap_or_default();
                    while sent.front().is_some_and(|(at, _)| *at < horizon) {
                        sent.pop_front();
                    }
                }
            }
            let wake = async { ctx.events.wake.notified().await };
            tokio::select! {
                _ = tokio::time::sleep(LOOK_EVERY) => {}
                _ = wake => {}
            }
        }
    });
}

/// Live events (`text/event-stream`).
#[utoipa::path(
    get,
    path = "/api/v1/events",
    operation_id = "events",
    tag = "events",
    responses(
        (status = 200, description = "Server-sent events: invalidation, health, rules, config; each event's data is the JSON of its type", content_type = "text/event-stream", body = String),
        (status = 401, description = "A token is needed", body = super::error::ErrorBody),
    ),
    security((), ("bearer" = []))
)]
pub async fn stream(
    State(ctx): State<Arc<Ctx>>,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let rx = ctx.events.tx.subscribe();
    // The current state first, so a view needs no second call to start.
    let first = vec![
        Event::Health(readiness(&ctx)),
        Event::Rules(ctx.status.rules_state()),
    ];
    ctx.events.notify_journal();
    let head = futures_util::stream::iter(first);
    let tail = futures_util::stream::unfold(rx, |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(e) => return Some((e, rx)),
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    use futures_util::StreamExt;
    let events = head.chain(tail).map(|e| {
        let data = match &e {
            Event::Invalidation(x) => serde_json::to_string(x),
            Event::Health(x) => serde_json::to_string(x),
            Event::Rules(x) => serde_json::to_string(x),
            Event::Config(x) => serde_json::to_string(x),
        }
        .unwrap_or_else(|_| "{}".into());
        Ok(SseEvent::default().event(e.name()).data(data))
    });
    Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}
