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
    #[param(max_length = 1024, pattern = "^[^\\u0000]*$")]
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

/// The longest TTL accepted, in seconds (68 years; `cache_configs.ttl` has the same bound).
pub const MAX_TTL: i64 = i32::MAX as i64;

/// Canonical base64 (padded): every string it matches decodes.
const BASE64: &str = "^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$";

/// A value to set: text (`value`) or bytes (`value_base64`), with an optional TTL.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum PutKey {
    Text(PutText),
    Bytes(PutBytes),
}

/// A text value.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutText {
    /// The value, as text.
    pub value: String,
    /// Seconds until it expires; absent, null or 0 for no expiry.
    #[serde(default, deserialize_with = "super::input::int_like")]
    #[schema(minimum = 0, maximum = 2147483647)]
    pub ttl: Option<i64>,
}

/// A value given as bytes.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutBytes {
    /// The value's bytes, base64 (padded).
    #[schema(pattern = "^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$")]
    pub value_base64: String,
    /// Seconds until it expires; absent, null or 0 for no expiry.
    #[serde(default, deserialize_with = "super::input::int_like")]
    #[schema(minimum = 0, maximum = 2147483647)]
    pub ttl: Option<i64>,
}

impl PutKey {
    /// The bytes and the TTL, checked.
    fn decode(self) -> Result<(Vec<u8>, Option<u64>), ApiError> {
        use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
        // Padded, with any trailing bits: what the document's pattern promises decodes.
        const LENIENT: GeneralPurpose = GeneralPurpose::new(
            &base64::alphabet::STANDARD,
            GeneralPurposeConfig::new()
                .with_decode_allow_trailing_bits(true)
                .with_decode_padding_mode(DecodePaddingMode::Indifferent),
        );
        let (bytes, ttl) = match self {
            PutKey::Text(PutText { value, ttl }) => (value.into_bytes(), ttl),
            PutKey::Bytes(PutBytes { value_base64, ttl }) => (
                LENIENT.decode(value_base64.as_bytes()).map_err(|e| {
                    ApiError::bad_request(format!(
                        "value_base64 is not base64 ({e}); it must match {BASE64}"
                    ))
                })?,
                ttl,
            ),
        };
        let ttl = match ttl {
            None | Some(0) => None,
            Some(t) if (1..=MAX_TTL).contains(&t) => Some(t as u64),
            Some(t) => {
                return Err(ApiError::bad_request(format!(
                    "ttl {t}: expected 0 to {MAX_TTL} seconds"
                )))
            }
        };
        Ok((bytes, ttl))
    }
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
    operation_id = "get_key",
    tag = "keys",
    params(("key" = String, Path, description = "The application's key (URL-encoded)", min_length = 1, max_length = 1024, pattern = "^[^\\u0000]*$"), RawParam),
    responses(
        (status = 200, description = "The key", body = KeyInfo),
        (status = 404, description = "Redis does not hold the key; the body still names the rules that produce such keys", body = KeyInfo),
        (status = 400, description = "Bad input", body = ErrorBody),
        (status = 401, description = "A token is needed", body = ErrorBody),
    ),
    security((), ("bearer" = []))
)]
pub async fn get_key(
    State(ctx): State<Arc<Ctx>>,
    Key(key): Key,
    Query(p): Query<RawParam>,
) -> Result<(StatusCode, Json<KeyInfo>), ApiError> {
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
    let exists = inspected.kind != "none";
    let code = if exists {
        StatusCode::OK
    } else {
        StatusCode::NOT_FOUND
    };
    Ok((
        code,
        Json(KeyInfo {
            key: ctx.app_name(&full).to_string(),
            redis_key: full,
            exists,
            kind: inspected.kind,
            ttl: inspected.ttl,
            value,
            encoding,
            memory_bytes: inspected.memory,
            rules,
        }),
    ))
}

/// Sets one key (manual warming). Not fenced: a value set by hand is the operator's call.
#[utoipa::path(
    put,
    path = "/api/v1/keys/{key}",
    operation_id = "put_key",
    tag = "keys",
    params(("key" = String, Path, description = "The application's key (URL-encoded)", min_length = 1, max_length = 1024, pattern = "^[^\\u0000]*$"), RawParam),
    request_body = PutKey,
    responses(
        (status = 200, description = "Set", body = PutResult),
        (status = 400, description = "Bad input", body = ErrorBody),
        (status = 401, description = "A token is needed", body = ErrorBody),
        (status = 403, description = "Writes are disabled (no [api] token)", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "The body is not JSON", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn put_key(
    State(ctx): State<Arc<Ctx>>,
    Key(key): Key,
    Query(p): Query<RawParam>,
    Body(body): Body<serde_json::Value>,
) -> Result<Json<PutResult>, ApiError> {
    let body: PutKey = super::error::one_of(
        body,
        "expected {\"value\": \"text\"} or {\"value_base64\": \"...\"}, with an optional \
         \"ttl\" (whole seconds, 0 for none), and no other field",
    )?;
    let full = ctx.full_name("key", &key, p.raw)?;
    let (bytes, ttl) = body.decode()?;
    ctx.cache()?
        .put(&full, &bytes, ttl)
        .await
        .map_err(|e| ApiError::unavailable("redis", e))?;
    tracing::info!(key = %full, bytes = bytes.len(), ttl = ?ttl, "key set through the API");
    Ok(Json(PutResult {
        key: ctx.app_name(&full).to_string(),
        redis_key: full,
        ttl,
        bytes: bytes.len(),
    }))
}

/// Deletes one key: a journaled invalidation (`cache_invalidations` row, fenced like any).
#[utoipa::path(
    delete,
    path = "/api/v1/keys/{key}",
    operation_id = "delete_key",
    tag = "keys",
    params(("key" = String, Path, description = "The application's key (URL-encoded)", min_length = 1, max_length = 1024, pattern = "^[^\\u0000]*$"), DeleteParams),
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
    super::bounded("reason", reason)?;
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
