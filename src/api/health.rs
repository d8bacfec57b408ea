//! The health routes: `/healthz` (200 while the process runs), `/readyz` (200 with an empty
//! `reasons` list, or 503 with every reason), `/status` (a JSON snapshot for humans and
//! dashboards) and `/metrics` (Prometheus). They only read [`Status`] and need no token:
//! orchestrators and Prometheus call them.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use crate::status::{Snapshot, Status};

async fn healthz() -> &'static str {
    "ok\n"
}

/// `/readyz`'s body: whether the worker is ready, and why not.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Readiness {
    pub ready: bool,
    pub reasons: Vec<String>,
}

async fn readyz(State(s): State<Arc<Status>>) -> impl IntoResponse {
    let reasons = s.not_ready_reasons();
    let code = if reasons.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        Json(Readiness {
            ready: reasons.is_empty(),
            reasons,
        }),
    )
}

async fn status_json(State(s): State<Arc<Status>>) -> Json<Snapshot> {
    Json(s.snapshot())
}

async fn metrics(State(s): State<Arc<Status>>) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            crate::metrics::CONTENT_TYPE,
        )],
        crate::metrics::render(&s),
    )
}

/// The status routes.
pub fn router(status: Arc<Status>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/status", get(status_json))
        .route("/metrics", get(metrics))
        .with_state(status)
}
