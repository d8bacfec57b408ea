//! `/api/v1/keys/{key}`: inspect one key (value, TTL, type, memory, and the rules that can
//! produce it), set one (manual warming), delete one (journaled, through the invalidation
//! lifecycle). Keys are the application's, `key_prefix` applied (`?raw=true` for full names).

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use base64::Engine;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::error::{ApiError, Body, ErrorBody, Key, Query};
use super::Ctx;
use crate::action::Target;
use crate::control::manual;
use crate::target::CacheTarget;

/// `?raw=true`: the key is the full Redis key, without `key_prefix`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RawParam {
    /// Use the name as the full Redis key (no `key_prefix`).
    #[serde(default)]
    pub raw: bool,
}

/// `DELETE` parameters.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeleteParams {
    /// Use the name as the full Redis key (no `key_prefix`).
    #[serde(default)]
    pub raw: bool,
    /// Why, recorded in `cache_invalidations.reason`.
    pub reason: Option<String>,
}

/// A rule that can produce the key.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct KeyRule {
    pub rule: String,
    /// The key template, as written in the rule file.
    pub template: String,
    /// Column values that render this key (empty when the key reads more than one way).
    pub fields: std::collections::BTreeMap<String, String>,
    pub file: String,
    pub line: usize,
    /// Whether the rule is switched on in `cache_configs`.
    pub active: bool,
}

/// One key as Redis holds it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct KeyInfo {
    /// The application's name for the key.
    pub key: String,
    /// The full Redis key.
    pub redis_key: String,
    pub exists: bool,
    /// Redis' type (`string`, `hash`, …; `none` when absent).
    #[serde(rename = "type")]
    pub kind: String,
    /// Seconds left; null without an expiry.
    pub ttl: Option<i64>,
    /// The value of a string key: text, or base64 when it is not UTF-8 (see `encoding`).
    pub value: Option<String>,
    /// `utf8` or `base64`.
    pub encoding: Option<String>,
    /// Bytes the key takes in Redis.
    pub memory_bytes: Option<u64>,
    /// The rules that can produce this key (templates matched in reverse).
    pub rules: Vec<KeyRule>,
}

/// A value to set.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutKey {
    /// The value: text, or base64 with `"encoding": "base64"`.
    pub value: String,
    /// Seconds until it expires; none or 0 for no expiry.
    #[schema(minimum = 0)]
    pub ttl: Option<u64>,
    /// `utf8` (default) or `base64`.
    pub encoding: Option<String>,
}

/// A key that was set.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PutResult {
    pub key: String,
    pub redis_key: String,
    pub ttl: Option<u64>,
    pub bytes: usize,
}

/// A journaled invalidation's outcome.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Invalidated {
    /// Its `cache_invalidations` ids.
    pub ids: Vec<String>,
    /// Keys removed (tag members included).
    pub removed: u64,
}

/// Inspects one key.
#[utoipa::path(
    get,
    path = "/api/v1/keys/{key}",
    tag = "keys",
    params(("key" = String, Path, description = "The application's key (URL-encoded)"), RawParam),
    responses(
        (status = 200, description = "The key (`exists: false` when Redis does not hold it)", body = KeyInfo),
        (status = 400, description = "Bad input", body = ErrorBody),
        (status = 401, description = "A token is needed", body = ErrorBody),
    ),
    security((), ("bearer" = []))
)]
pub async fn get_key(
    State(ctx): State<Arc<Ctx>>,
    Key(key): Key,
    Query(p): Query<RawParam>,
) -> Result<Json<KeyInfo>, ApiError> {
    let full = ctx.full_name("key", &key, p.raw)?;
    let mut cache = ctx.cache()?;
    // The reads count in Redis' hits; the monitor leaves them out of cache_metrics.
    let inspected = {
        let mut own = ctx.status.own_reads.lock().await;
        let r = cache
            .inspect(&full)
            .await
            .map_err(|e| ApiError::unavailable("redis", e))?;
        own.hits += r.reads;
        r
    };
    let disabled = ctx.status.disabled();
    let rules = ctx
        .status
        .rule_set()
        .map(|set| {
            crate::rules::reverse::producers(&set, &ctx.config.redis.key_prefix, &full)
                .into_iter()
                .map(|p| KeyRule {
                    active: !disabled.contains(&p.rule),
                    rule: p.rule,
                    template: p.template,
                    fields: p.fields.into_iter().collect(),
                    file: p.file,
                    line: p.line,
                })
                .collect()
        })
        .unwrap_or_default();
    let (value, encoding) = match inspected.value {
        Some(v) => match String::from_utf8(v) {
            Ok(s) => (Some(s), Some("utf8".to_string())),
            Err(e) => (
                Some(base64::engine::general_purpose::STANDARD.encode(e.into_bytes())),
                Some("base64".to_string()),
            ),
        },
        None => (None, None),
    };
    Ok(Json(KeyInfo {
        key: ctx.app_name(&full).to_string(),
        redis_key: full,
        exists: inspected.kind != "none",
        kind: inspected.kind,
        ttl: inspected.ttl,
        value,
        encoding,
        memory_bytes: inspected.memory,
        rules,
    }))
}

/// Sets one key (manual warming). Not fenced: a value set by hand is the operator's call.
#[utoipa::path(
    put,
    path = "/api/v1/keys/{key}",
    tag = "keys",
    params(("key" = String, Path, description = "The application's key (URL-encoded)"), RawParam),
    request_body = PutKey,
    responses(
        (status = 200, description = "Set", body = PutResult),
        (status = 400, description = "Bad input", body = ErrorBody),
        (status = 401, description = "A token is needed", body = ErrorBody),
        (status = 403, description = "Writes are disabled (no [api] token)", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn put_key(
    State(ctx): State<Arc<Ctx>>,
    Key(key): Key,
    Query(p): Query<RawParam>,
    Body(body): Body<PutKey>,
) -> Result<Json<PutResult>, ApiError> {
    let full = ctx.full_name("key", &key, p.raw)?;
    let bytes = match body.encoding.as_deref() {
        None | Some("utf8") => body.value.into_bytes(),
        Some("base64") => base64::engine::general_purpose::STANDARD
            .decode(body.value.as_bytes())
            .map_err(|e| ApiError::bad_request(format!("value is not valid base64: {e}")))?,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "encoding {other:?}: expected \"utf8\" or \"base64\""
            )))
        }
    };
    // Redis' EX takes a positive 64-bit integer within its own bound.
    if let Some(t) = body.ttl.filter(|t| *t > i64::MAX as u64 / 1000) {
        return Err(ApiError::bad_request(format!(
            "ttl {t}: at most {} seconds",
            i64::MAX / 1000
        )));
    }
    ctx.cache()?
        .put(&full, &bytes, body.ttl)
        .await
        .map_err(|e| ApiError::unavailable("redis", e))?;
    tracing::info!(key = %full, bytes = bytes.len(), ttl = ?body.ttl, "key set through the API");
    Ok(Json(PutResult {
        key: ctx.app_name(&full).to_string(),
        redis_key: full,
        ttl: body.ttl.filter(|t| *t > 0),
        bytes: bytes.len(),
    }))
}

/// Deletes one key: a journaled invalidation (`cache_invalidations` row, fenced like any).
#[utoipa::path(
    delete,
    path = "/api/v1/keys/{key}",
    tag = "keys",
    params(("key" = String, Path, description = "The application's key (URL-encoded)"), DeleteParams),
    responses(
        (status = 200, description = "Invalidated and journaled", body = Invalidated),
        (status = 400, description = "Bad input", body = ErrorBody),
        (status = 401, description = "A token is needed", body = ErrorBody),
        (status = 403, description = "Writes are disabled (no [api] token)", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn delete_key(
    State(ctx): State<Arc<Ctx>>,
    Key(key): Key,
    Query(p): Query<DeleteParams>,
) -> Result<(StatusCode, Json<Invalidated>), ApiError> {
    let full = ctx.full_name("key", &key, p.raw)?;
    let reason = p.reason.unwrap_or_else(|| "deleted through the API".into());
    let done = run(&ctx, &[Target::Key(full)], &reason).await?;
    Ok((StatusCode::OK, Json(done)))
}

/// Runs a journaled invalidation of `targets` (the one lifecycle; see `control::manual`).
pub(super) async fn run(
    ctx: &Ctx,
    targets: &[Target],
    reason: &str,
) -> Result<Invalidated, ApiError> {
    if reason.len() > ctx.config.api.max_key_bytes {
        return Err(ApiError::bad_request(format!(
            "reason is {} bytes, more than [api] max_key_bytes ({})",
            reason.len(),
            ctx.config.api.max_key_bytes
        )));
    }
    let client = ctx.db().await?;
    let mut journal = ctx.journal()?;
    let mut cache = ctx.cache()?;
    let rules = ctx.status.rule_set();
    let r = manual::invalidate_now(
        &mut journal,
        &client,
        rules.as_deref(),
        &ctx.config.redis.key_prefix,
        &mut cache,
        targets,
        reason,
    )
    .await;
    match r {
        Ok(done) => {
            tracing::info!(
                targets = targets.len(),
                removed = done.report.removed,
                reason,
                "invalidation through the API"
            );
            ctx.events.notify_journal();
            Ok(Invalidated {
                ids: done.ids,
                removed: done.report.removed,
            })
        }
        Err(e) => Err(ApiError::unavailable("invalidation", e)),
    }
}
