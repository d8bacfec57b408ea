//! The worker's HTTP surface, on the `[status] listen` address.
//!
//! * [`health`] — `/healthz`, `/readyz`, `/status`, `/metrics`: read-only, no token.
//! * `/api/v1` — the operator API: [`keys`] (inspect, set, delete one key), [`invalidations`]
//!   (run one, with a dry run; page through the journal), [`stats`] (figures over a window, as
//!   series for charts), [`configs`] (rule switches, TTL and strategy in `cache_configs`, drift
//!   from the files), [`advice`] (the optimization advisor's suggestions), [`events`]
//!   (server-sent events for live views), and [`openapi`] (the
//!   OpenAPI 3.1 document, generated from the types here).
//! * [`console`] — the web console at `/`, built from `console/` and embedded in the binary.
//!
//! Every call goes through [`auth::Policy`] (bearer token for writes; for reads too off
//! loopback). Bad input is a 4xx with a JSON `{error, detail}` ([`error`]), bodies and keys are
//! bounded (`[api] max_body_bytes`; keys, patterns, tags and reasons at [`MAX_NAME`]
//! characters, as the OpenAPI document says). Invalidations go through the one
//! lifecycle ([`crate::control::manual`]), never a copy of it.

pub mod advice;
pub mod auth;
pub mod configs;
pub mod console;
pub mod error;
pub mod events;
pub mod health;
mod input;
pub mod invalidations;
pub mod keys;
pub mod openapi;
pub mod stats;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio_postgres::Client;

use crate::config::Config;
use crate::status::Status;
use crate::target::Targets;
use error::ApiError;

pub use health::router;

/// The longest key, pattern, tag or reason accepted, in characters (the OpenAPI document's
/// `maxLength`).
pub const MAX_NAME: usize = 1024;

/// Checks a name's length against [`MAX_NAME`], and that it holds no NUL character (the
/// journal's `text` columns cannot store one).
pub fn bounded(what: &str, name: &str) -> Result<(), ApiError> {
    if name.contains('\0') {
        return Err(ApiError::bad_request(format!(
            "{what} contains a NUL character, which the journal cannot record"
        )));
    }
    let n = name.chars().count();
    if n > MAX_NAME {
        return Err(ApiError::bad_request(format!(
            "{what} is {n} characters, more than the {MAX_NAME} the API accepts"
        )));
    }
    Ok(())
}

/// What the operator API's handlers share.
pub struct Ctx {
    pub status: Arc<Status>,
    pub config: Arc<Config>,
    pub policy: auth::Policy,
    db: tokio::sync::Mutex<Option<Arc<Client>>>,
    pub events: events::Hub,
}

impl Ctx {
    pub fn new(status: Arc<Status>, config: Arc<Config>) -> Arc<Self> {
        let policy = auth::Policy::new(config.api.token.as_deref(), &config.status.listen);
        Arc::new(Ctx {
            events: events::Hub::default(),
            status,
            config,
            policy,
            db: tokio::sync::Mutex::new(None),
        })
    }

    /// A PostgreSQL connection for reads, reopened when it closed.
    pub async fn db(&self) -> Result<Arc<Client>, ApiError> {
        let mut slot = self.db.lock().await;
        if let Some(c) = slot.as_ref().filter(|c| !c.is_closed()) {
            return Ok(c.clone());
        }
        let pg = self
            .config
            .postgres_config()
            .map_err(|e| ApiError::unavailable("postgres", e))?;
        let c = Arc::new(
            crate::db::connect(&pg)
                .await
                .map_err(|e| ApiError::unavailable("postgres", e))?,
        );
        *slot = Some(c.clone());
        Ok(c)
    }

    /// The caches, for one call (connections open on first use).
    pub fn cache(&self) -> Result<Targets, ApiError> {
        Targets::open(&self.config).map_err(|e| ApiError::unavailable("redis", e))
    }

    /// A journal for one call's invalidation.
    pub fn journal(&self) -> Result<crate::journal::PgJournal, ApiError> {
        let pg = self
            .config
            .postgres_config()
            .map_err(|e| ApiError::unavailable("postgres", e))?;
        Ok(crate::journal::PgJournal::new(pg))
    }

    /// The full Redis name of what a request names: `key_prefix` applied unless `raw`, and
    /// bounded by [`MAX_NAME`].
    pub fn full_name(&self, what: &str, name: &str, raw: bool) -> Result<String, ApiError> {
        if name.is_empty() {
            return Err(ApiError::bad_request(format!("{what} must not be empty")));
        }
        bounded(what, name)?;
        Ok(if raw {
            name.to_string()
        } else {
            format!("{}{name}", self.config.redis.key_prefix)
        })
    }

    /// Tells live views that a rule's configuration changed.
    pub fn config_changed(&self, view: configs::ConfigView) {
        self.events.send(events::Event::Config(view));
    }

    /// The application's name for a full Redis name (`key_prefix` removed when present).
    pub fn app_name<'a>(&self, full: &'a str) -> &'a str {
        full.strip_prefix(self.config.redis.key_prefix.as_str())
            .unwrap_or(full)
    }
}

/// Refuses calls the policy does not allow, before any handler runs.
async fn authorize(State(ctx): State<Arc<Ctx>>, req: Request, next: Next) -> Response {
    match ctx.policy.check(req.method(), req.headers()) {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint (see /api/v1/openapi.json)")
}

/// `/api/v1`: the operator API, authorized, bounded, JSON errors throughout.
fn v1(ctx: Arc<Ctx>) -> Router {
    let api = Router::new()
        .route(
            "/keys/{key}",
            get(keys::get_key)
                .put(keys::put_key)
                .delete(keys::delete_key),
        )
        .route(
            "/invalidations",
            get(invalidations::list).post(invalidations::create),
        )
        .route("/stats", get(stats::stats))
        .route("/advice", get(advice::advice))
        .route("/configs", get(configs::list))
        .route("/configs/{rule}", axum::routing::patch(configs::patch))
        .route("/events", get(events::stream))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(ctx.clone(), authorize))
        .layer(DefaultBodyLimit::max(ctx.config.api.max_body_bytes))
        .with_state(ctx);
    // The document describes the API; it needs no token, like /metrics.
    Router::new()
        .route("/openapi.json", get(openapi::document))
        .merge(api)
}

/// Every route: health, the operator API and the console.
pub fn app(status: Arc<Status>, config: Arc<Config>) -> Router {
    let ctx = Ctx::new(status.clone(), config);
    events::spawn_watch(ctx.clone());
    health::router(status)
        .nest("/api/v1", v1(ctx.clone()))
        .merge(console::router())
}

/// Serves `router` until `shutdown` completes (peers' addresses available to handlers).
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}
