//! `/api/v1/invalidations`: run one (a pattern, keys or tags, journaled through the one
//! lifecycle; `?dry_run=true` counts what it would touch and touches nothing), and page
//! through `cache_invalidations`, newest first, with an opaque cursor.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use base64::Engine;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::error::{ApiError, Body, ErrorBody, Query};
use super::keys::Invalidated;
use super::Ctx;
use crate::action::Target;
use crate::control::manual;
use crate::target::{CacheTarget, Preview};

/// Most keys or tags one request may name.
pub const MAX_TARGETS: usize = 1000;
/// Names a dry run returns.
const SAMPLE: usize = 20;

/// An invalidation to run: exactly one of `pattern`, `keys` or `tags`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewInvalidation {
    /// A key or Redis glob (`course:*`).
    pub pattern: Option<String>,
    /// Exact keys (at most 1000).
    pub keys: Option<Vec<String>>,
    /// Tag names (`course:42` is the set `tag:course:42`; at most 1000).
    pub tags: Option<Vec<String>>,
    /// Why, recorded in `cache_invalidations.reason`.
    #[serde(default)]
    pub reason: String,
}

/// `POST` parameters.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CreateParams {
    /// Count what would be touched, touching nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// Names are full Redis names (no `key_prefix`).
    #[serde(default)]
    pub raw: bool,
}

/// What an invalidation would touch.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DryRun {
    pub dry_run: bool,
    /// Keys it would remove (tag members included).
    pub count: u64,
    /// Some of them (at most 20), as the application names them.
    pub sample: Vec<String>,
    /// The Redis targets it would run, prefix applied.
    pub targets: Vec<String>,
}

/// The answer to `POST /api/v1/invalidations`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum CreateResult {
    Done(Invalidated),
    DryRun(DryRun),
}

/// The Redis targets a request names.
fn targets(ctx: &Ctx, req: &NewInvalidation, raw: bool) -> Result<Vec<Target>, ApiError> {
    let given = [
        req.pattern.is_some(),
        req.keys.is_some(),
        req.tags.is_some(),
    ];
    if given.iter().filter(|g| **g).count() != 1 {
        return Err(ApiError::bad_request(
            "give exactly one of pattern, keys or tags",
        ));
    }
    if let Some(p) = &req.pattern {
        return Ok(vec![manual::key_or_pattern(
            ctx.full_name("pattern", p, raw)?,
        )]);
    }
    let (what, names) = match (&req.keys, &req.tags) {
        (Some(k), _) => ("keys", k),
        (_, Some(t)) => ("tags", t),
        _ => return Err(ApiError::bad_request("nothing to invalidate")),
    };
    if names.is_empty() || names.len() > MAX_TARGETS {
        return Err(ApiError::bad_request(format!(
            "{what}: give 1 to {MAX_TARGETS} names, not {}",
            names.len()
        )));
    }
    names
        .iter()
        .map(|n| {
            Ok(if what == "keys" {
                Target::Key(ctx.full_name("key", n, raw)?)
            } else {
                let tag = ctx.full_name("tag", n, raw)?;
                // A tag set lives at <prefix>tag:<name> (rules' `tags`).
                Target::Tag(if raw {
                    tag
                } else {
                    format!("{}tag:{n}", ctx.config.redis.key_prefix)
                })
            })
        })
        .collect()
}

/// Runs (or dry-runs) an invalidation.
#[utoipa::path(
    post,
    path = "/api/v1/invalidations",
    tag = "invalidations",
    params(CreateParams),
    request_body = NewInvalidation,
    responses(
        (status = 201, description = "Invalidated and journaled", body = Invalidated),
        (status = 200, description = "Dry run: what it would touch", body = DryRun),
        (status = 400, description = "Bad input", body = ErrorBody),
        (status = 401, description = "A token is needed", body = ErrorBody),
        (status = 403, description = "Writes are disabled (no [api] token)", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn create(
    State(ctx): State<Arc<Ctx>>,
    Query(p): Query<CreateParams>,
    Body(req): Body<NewInvalidation>,
) -> Result<(StatusCode, Json<CreateResult>), ApiError> {
    let targets = targets(&ctx, &req, p.raw)?;
    if p.dry_run {
        let mut cache = ctx.cache()?;
        let mut total = Preview::default();
        {
            let mut own = ctx.status.own_reads.lock().await;
            for t in &targets {
                let each = cache
                    .preview(t, SAMPLE.saturating_sub(total.sample.len()))
                    .await
                    .map_err(|e| ApiError::unavailable("redis", e))?;
                total.count += each.count;
                total.reads += each.reads;
                total.sample.extend(each.sample);
            }
            own.hits += total.reads;
        }
        return Ok((
            StatusCode::OK,
            Json(CreateResult::DryRun(DryRun {
                dry_run: true,
                count: total.count,
                sample: total
                    .sample
                    .iter()
                    .map(|s| ctx.app_name(s).to_string())
                    .collect(),
                targets: targets.iter().map(|t| t.text().to_string()).collect(),
            })),
        ));
    }
    let reason = if req.reason.trim().is_empty() {
        "invalidation through the API".to_string()
    } else {
        req.reason.clone()
    };
    let done = super::keys::run(&ctx, &targets, &reason).await?;
    Ok((StatusCode::CREATED, Json(CreateResult::Done(done))))
}

/// Journal filters.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// `pending`, `running`, `completed` or `failed`.
    pub status: Option<String>,
    /// Only rows triggered at or after this: an RFC 3339 time or a period back from now
    /// (`15m`, `2h`, `7d`).
    pub since: Option<String>,
    /// Rows per page (1–500, default 50).
    pub limit: Option<i64>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// One `cache_invalidations` row.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Invalidation {
    pub id: String,
    /// What was invalidated, prefix included (a key, a glob, a tag set, a family).
    pub key_pattern: String,
    pub kind: String,
    /// The first keys of a many-keys row (at most 50).
    pub keys: Vec<String>,
    pub key_count: i32,
    pub reason: String,
    pub status: String,
    pub rule_name: Option<String>,
    pub source_table: Option<String>,
    pub lsn: Option<String>,
    pub error: Option<String>,
    pub triggered_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
}

/// A page of the journal.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct InvalidationPage {
    pub items: Vec<Invalidation>,
    /// Pass as `cursor` for the next (older) page; null on the last page.
    pub next_cursor: Option<String>,
}

/// The columns [`from_row`] reads.
pub(super) const COLUMNS: &str = "id::text, key_pattern, kind, COALESCE(keys[1:50], '{}'), \
     key_count, reason, status, rule_name, source_table, lsn::text, error, triggered_at, \
     completed_at";

/// A row of [`COLUMNS`].
pub(super) fn from_row(r: &tokio_postgres::Row) -> Invalidation {
    Invalidation {
        id: r.get(0),
        key_pattern: r.get(1),
        kind: r.get(2),
        keys: r.get(3),
        key_count: r.get(4),
        reason: r.get(5),
        status: r.get(6),
        rule_name: r.get(7),
        source_table: r.get(8),
        lsn: r.get(9),
        error: r.get(10),
        triggered_at: r.get(11),
        completed_at: r.get(12),
    }
}

const STATUSES: [&str; 4] = ["pending", "running", "completed", "failed"];

/// `since` as a time: RFC 3339, or a period back from now.
pub(super) fn parse_since(s: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, ApiError> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    match crate::config::parse_period(s)
        .and_then(|d| chrono::Duration::from_std(d).ok())
        .and_then(|d| now.checked_sub_signed(d))
    {
        Some(t) => Ok(t),
        None => Err(ApiError::bad_request(format!(
            "since {s:?}: expected an RFC 3339 time or a period such as \"15m\""
        ))),
    }
}

fn encode_cursor(at: DateTime<Utc>, id: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!(
        "{}|{id}",
        at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
    ))
}

fn decode_cursor(c: &str) -> Result<(DateTime<Utc>, String), ApiError> {
    let bad = || ApiError::bad_request("cursor is not one this API returned");
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(c.as_bytes())
        .map_err(|_| bad())?;
    let text = String::from_utf8(raw).map_err(|_| bad())?;
    let (at, id) = text.split_once('|').ok_or_else(bad)?;
    let at = DateTime::parse_from_rfc3339(at).map_err(|_| bad())?;
    if !is_uuid(id) {
        return Err(bad());
    }
    Ok((at.with_timezone(&Utc), id.to_ascii_lowercase()))
}

/// Whether `s` is a UUID in its text form (the id column is compared as `$n::uuid`).
fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// Pages through the journal, newest first.
#[utoipa::path(
    get,
    path = "/api/v1/invalidations",
    tag = "invalidations",
    params(ListParams),
    responses(
        (status = 200, description = "A page, newest first", body = InvalidationPage),
        (status = 400, description = "Bad input", body = ErrorBody),
        (status = 401, description = "A token is needed", body = ErrorBody),
    ),
    security((), ("bearer" = []))
)]
pub async fn list(
    State(ctx): State<Arc<Ctx>>,
    Query(p): Query<ListParams>,
) -> Result<Json<InvalidationPage>, ApiError> {
    let limit = p.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit {limit}: expected 1 to 500"
        )));
    }
    if let Some(s) = &p.status {
        if !STATUSES.contains(&s.as_str()) {
            return Err(ApiError::bad_request(format!(
                "status {s:?}: expected one of {}",
                STATUSES.join(", ")
            )));
        }
    }
    let since = p
        .since
        .as_deref()
        .map(|s| parse_since(s, Utc::now()))
        .transpose()?;
    let cursor = p.cursor.as_deref().map(decode_cursor).transpose()?;
    let (cursor_at, cursor_id) = match cursor {
        Some((at, id)) => (Some(at), Some(id)),
        None => (None, None),
    };
    let client = ctx.db().await?;
    let rows = client
        .query(
            &format!(
                "SELECT {COLUMNS} FROM cache_invalidations \
             WHERE ($1::text IS NULL OR status = $1) \
               AND ($2::timestamptz IS NULL OR triggered_at >= $2) \
               AND ($3::timestamptz IS NULL OR (triggered_at, id) < ($3, $4::text::uuid)) \
             ORDER BY triggered_at DESC, id DESC LIMIT $5"
            ),
            &[&p.status, &since, &cursor_at, &cursor_id, &(limit + 1)],
        )
        .await
        .map_err(|e| ApiError::unavailable("postgres", e))?;
    let mut items: Vec<Invalidation> = rows.iter().map(from_row).collect();
    let next_cursor = if items.len() as i64 > limit {
        items.truncate(limit as usize);
        items.last().map(|l| encode_cursor(l.triggered_at, &l.id))
    } else {
        None
    };
    Ok(Json(InvalidationPage { items, next_cursor }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let at = DateTime::parse_from_rfc3339("2026-12-01T10:00:00.123456Z")
            .unwrap()
            .with_timezone(&Utc);
        let id = "0b8f6f1e-5a4c-4a7e-9d1e-2f3a4b5c6d7e";
        let (a, i) = decode_cursor(&encode_cursor(at, id)).unwrap();
        assert_eq!((a, i.as_str()), (at, id));
        for bad in [
            "",
            "%%%",
            "bm90IGEgY3Vyc29y",
            &base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("2026-12-01T10:00:00Z|x"),
        ] {
            assert_eq!(
                decode_cursor(bad).unwrap_err().status,
                StatusCode::BAD_REQUEST,
                "{bad}"
            );
        }
    }

    #[test]
    fn since_takes_a_time_or_a_period() {
        let now = DateTime::parse_from_rfc3339("2026-12-01T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            parse_since("15m", now).unwrap(),
            now - chrono::Duration::minutes(15)
        );
        assert_eq!(
            parse_since("2026-11-30T00:00:00+01:00", now)
                .unwrap()
                .to_rfc3339(),
            "2026-11-29T23:00:00+00:00"
        );
        assert!(parse_since("yesterday", now).is_err());
        assert!(parse_since("99999999999d", now).is_err());
    }
}
