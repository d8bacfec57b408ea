//! `/api/v1/invalidations`: run one (a pattern, keys or tags, journaled through the one
//! lifecycle; `?dry_run=true` counts what it would touch and touches nothing), and page
//! through `cache_invalidations`, newest first, with an opaque cursor.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
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

/// An invalidation to run: a `pattern`, `keys` or `tags`, with an optional `reason`
/// (recorded in `cache_invalidations.reason`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum NewInvalidation {
    Pattern(PatternRequest),
    Keys(KeysRequest),
    Tags(TagsRequest),
}

/// Every key matching a pattern.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatternRequest {
    /// A key or Redis glob (`course:*`).
    #[schema(min_length = 1, max_length = 1024, pattern = "^[^\\u0000]*$")]
    pub pattern: String,
    #[serde(default)]
    #[schema(max_length = 1024, pattern = "^[^\\u0000]*$")]
    pub reason: String,
}

/// Exact keys.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeysRequest {
    #[schema(min_items = 1, max_items = 1000)]
    pub keys: Vec<Name>,
    #[serde(default)]
    #[schema(max_length = 1024, pattern = "^[^\\u0000]*$")]
    pub reason: String,
}

/// Tag sets (`course:42` is the set `tag:course:42`), with their members.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TagsRequest {
    #[schema(min_items = 1, max_items = 1000)]
    pub tags: Vec<Name>,
    #[serde(default)]
    #[schema(max_length = 1024, pattern = "^[^\\u0000]*$")]
    pub reason: String,
}

/// A key or tag name.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Name(pub String);

impl utoipa::PartialSchema for Name {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .min_length(Some(1))
            .max_length(Some(super::MAX_NAME))
            .pattern(Some("^[^\\u0000]*$"))
            .description(Some("A key or tag name, as the application names it"))
            .into()
    }
}

impl ToSchema for Name {}

impl NewInvalidation {
    fn reason(&self) -> &str {
        match self {
            NewInvalidation::Pattern(r) => &r.reason,
            NewInvalidation::Keys(r) => &r.reason,
            NewInvalidation::Tags(r) => &r.reason,
        }
    }
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
    let (what, names) = match req {
        NewInvalidation::Pattern(r) => {
            return Ok(vec![manual::key_or_pattern(
                ctx.full_name("pattern", &r.pattern, raw)?,
            )])
        }
        NewInvalidation::Keys(r) => ("keys", &r.keys),
        NewInvalidation::Tags(r) => ("tags", &r.tags),
    };
    let names: Vec<&String> = names.iter().map(|n| &n.0).collect();
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
    operation_id = "create_invalidation",
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
        (status = 415, description = "The body is not JSON", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn create(
    State(ctx): State<Arc<Ctx>>,
    Query(p): Query<CreateParams>,
    Body(req): Body<serde_json::Value>,
) -> Result<(StatusCode, Json<CreateResult>), ApiError> {
    let req: NewInvalidation = super::error::one_of(
        req,
        "expected {\"pattern\": \"...\"}, {\"keys\": [...]} or {\"tags\": [...]} (exactly one; \
         1 to 1000 names), with an optional \"reason\", and no other field",
    )?;
    let targets = targets(&ctx, &req, p.raw)?;
    super::bounded("reason", req.reason())?;
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
    let reason = if req.reason().trim().is_empty() {
        "invalidation through the API".to_string()
    } else {
        req.reason().to_string()
    };
    let done = super::keys::run(&ctx, &targets, &reason).await?;
    Ok((StatusCode::CREATED, Json(CreateResult::Done(done))))
}

/// A journal row's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RowStatus {
    Pending,
    Running,
    Completed,
    Failed,
}

impl RowStatus {
    fn as_str(self) -> &'static str {
        match self {
            RowStatus::Pending => "pending",
            RowStatus::Running => "running",
            RowStatus::Completed => "completed",
            RowStatus::Failed => "failed",
        }
    }
}

/// Journal filters.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Only rows in this status.
    #[param(inline)]
    pub status: Option<RowStatus>,
    /// Only rows triggered at or after this RFC 3339 time (a period back from now, such as
    /// `15m` or `7d`, is accepted too).
    #[param(format = DateTime)]
    pub since: Option<String>,
    /// Rows per page (default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
    /// The `next_cursor` of the previous page.
    #[param(
        pattern = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
    )]
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

/// `since` as a time: RFC 3339, or a period back from now.
pub(super) fn parse_since(s: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, ApiError> {
    // RFC 3339 allows a lowercase `t` and `z`.
    if let Ok(t) = DateTime::parse_from_rfc3339(&s.to_ascii_uppercase()) {
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

/// Whether `s` is a UUID in its text form.
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
    operation_id = "list_invalidations",
    tag = "invalidations",
    params(ListParams),
    responses(
        (status = 200, description = "A page, newest first", body = InvalidationPage),
        (status = 400, description = "Bad input", body = ErrorBody),
        (status = 401, description = "A token is needed", body = ErrorBody),
        (status = 404, description = "No journal row has the cursor's id (retention removed it)", body = ErrorBody),
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
    let status = p.status.map(RowStatus::as_str);
    let since = p
        .since
        .as_deref()
        .map(|s| parse_since(s, Utc::now()))
        .transpose()?;
    let client = ctx.db().await?;
    // The cursor is the id of the last row of the previous page; the page goes on from its
    // (triggered_at, id).
    let cursor = match p.cursor.as_deref() {
        None => None,
        Some(c) if is_uuid(c) => {
            let row = client
                .query_opt(
                    "SELECT triggered_at, id::text FROM cache_invalidations WHERE id = $1::text::uuid",
                    &[&c],
                )
                .await
                .map_err(|e| ApiError::unavailable("postgres", e))?
                .ok_or_else(|| {
                    ApiError::not_found(format!(
                        "cursor {c}: no journal row has this id (retention may have removed it)"
                    ))
                })?;
            Some((row.get::<_, DateTime<Utc>>(0), row.get::<_, String>(1)))
        }
        Some(c) => {
            return Err(ApiError::bad_request(format!(
                "cursor {c:?}: expected the next_cursor of a previous page"
            )))
        }
    };
    let (cursor_at, cursor_id) = match cursor {
        Some((at, id)) => (Some(at), Some(id)),
        None => (None, None),
    };
    let rows = client
        .query(
            &format!(
                "SELECT {COLUMNS} FROM cache_invalidations \
             WHERE ($1::text IS NULL OR status = $1) \
               AND ($2::timestamptz IS NULL OR triggered_at >= $2) \
               AND ($3::timestamptz IS NULL OR (triggered_at, id) < ($3, $4::text::uuid)) \
             ORDER BY triggered_at DESC, id DESC LIMIT $5"
            ),
            &[&status, &since, &cursor_at, &cursor_id, &(limit + 1)],
        )
        .await
        .map_err(|e| ApiError::unavailable("postgres", e))?;
    let mut items: Vec<Invalidation> = rows.iter().map(from_row).collect();
    let next_cursor = if items.len() as i64 > limit {
        items.truncate(limit as usize);
        items.last().map(|l| l.id.clone())
    } else {
        None
    };
    Ok(Json(InvalidationPage { items, next_cursor }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_are_row_ids() {
        assert!(is_uuid("0b8f6f1e-5a4c-4a7e-9d1e-2f3a4b5c6d7e"));
        for bad in [
            "",
            "x",
            "0b8f6f1e5a4c4a7e9d1e2f3a4b5c6d7e",
            "0b8f6f1e-5a4c-4a7e-9d1e-2f3a4b5c6d7g",
        ] {
            assert!(!is_uuid(bad), "{bad}");
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
        assert_eq!(
            parse_since("2026-11-30t00:00:00z", now)
                .unwrap()
                .to_rfc3339(),
            "2026-11-30T00:00:00+00:00"
        );
        assert!(parse_since("yesterday", now).is_err());
        assert!(parse_since("99999999999d", now).is_err());
    }
}
