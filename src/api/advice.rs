//! `GET /api/v1/advice?window=24h`: the optimization advisor's suggestions for the rules in
//! force (see [`crate::advice`]), each with its figures and the exact rule-file change.

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::error::{ApiError, ErrorBody, Query};
use super::Ctx;
use crate::advice::Suggestion;

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AdviceParams {
    /// How far back to look: `1h`, `24h` (default), `7d`; clamped to 1 minute .. 30 days.
    #[param(pattern = "^[1-9][0-9]{0,8}[smhd]$")]
    pub window: Option<String>,
}

/// The advisor's answer.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Advice {
    pub window_seconds: u64,
    /// Journal rows in the window.
    pub journal_rows: u64,
    pub suggestions: Vec<Suggestion>,
}

/// Suggestions for the rules in force.
#[utoipa::path(
    get,
    path = "/api/v1/advice",
    operation_id = "get_advice",
    tag = "stats",
    params(AdviceParams),
    responses(
        (status = 200, description = "Suggestions, most actionable first", body = Advice),
        (status = 400, description = "Bad input", body = ErrorBody),
        (status = 401, description = "A token is needed", body = ErrorBody),
    ),
    security((), ("bearer" = []))
)]
pub async fn advice(
    State(ctx): State<Arc<Ctx>>,
    Query(p): Query<AdviceParams>,
) -> Result<Json<Advice>, ApiError> {
    let text = p.window.as_deref().unwrap_or("24h");
    let secs = crate::config::parse_period(text)
        .map(|d| d.as_secs().clamp(60, 30 * 86_400))
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "window {text:?}: expected a period such as \"24h\""
            ))
        })?;
    let rules = ctx.status.rule_set().unwrap_or_default();
    let client = ctx.db().await?;
    let figures = crate::advice::gather(
        &ctx.config,
        &client,
        &rules,
        secs,
        ctx.status.column_changes(),
    )
    .await
    .map_err(|e| ApiError::unavailable("advice", e))?;
    Ok(Json(Advice {
        window_seconds: figures.window_seconds,
        journal_rows: figures.journal_rows,
        suggestions: crate::advice::suggest(&figures),
    }))
}
