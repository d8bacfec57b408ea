//! `/api/v1/configs`: each rule's `cache_configs` row beside what its rule file says, and
//! `PATCH /api/v1/configs/{rule}` to switch a rule on or off or change its TTL or strategy,
//! validated and recorded with who and when (`updated_by`, `updated_at`).
//!
//! `is_active` takes effect within one control interval (the worker's switches). `ttl` and
//! `strategy` are recorded and shown as drift from the rule file, which stays the source of
//! truth: the next reload or restart writes the file's values back.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts, State};
use axum::http::request::Parts;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::{ApiError, Body, ErrorBody, Key};
use super::Ctx;

/// One rule's configuration.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ConfigView {
    pub name: String,
    pub table: String,
    /// The rule's keys, patterns, tags and bumps.
    pub key_pattern: String,
    /// Seconds (`cache_configs.ttl`).
    pub ttl: Option<i32>,
    pub strategy: String,
    pub is_active: bool,
    pub updated_at: DateTime<Utc>,
    /// Who changed the row last (`rule file` for the worker's sync).
    pub updated_by: Option<String>,
    /// Whether the rule is in the rule files the worker runs now.
    pub loaded: bool,
    /// Where the rule is defined.
    pub rule_file: Option<String>,
    pub line: Option<usize>,
    /// What the rule file says.
    pub file_ttl: Option<i64>,
    pub file_strategy: Option<String>,
    /// Where `cache_configs` differs from the rule file.
    pub drift: Vec<String>,
}

/// A change to one rule's configuration: any of the three fields.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfigPatch {
    /// Switch the rule on or off (applied within one control interval).
    pub is_active: Option<bool>,
    /// Seconds.
    #[serde(default, deserialize_with = "super::input::int_like")]
    #[schema(minimum = 0, maximum = 2147483647)]
    pub ttl: Option<i64>,
    /// `refresh` and `write-through` need the rule's `[rule.warm]` (409 otherwise).
    #[schema(inline)]
    pub strategy: Option<StrategyName>,
}

/// A strategy's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum StrategyName {
    Invalidate,
    Refresh,
    WriteThrough,
}

impl StrategyName {
    fn as_str(self) -> &'static str {
        match self {
            StrategyName::Invalidate => "invalidate",
            StrategyName::Refresh => "refresh",
            StrategyName::WriteThrough => "write-through",
        }
    }
}

/// Who is calling: `X-Cachewarden-Actor` when given (a name, at most 64 printable
/// characters), else the peer's address.
pub struct Actor(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Actor {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        if let Some(v) = parts.headers.get("x-cachewarden-actor") {
            let name = v
                .to_str()
                .ok()
                .map(str::trim)
                .filter(|n| !n.is_empty() && n.len() <= 64 && n.chars().all(|c| !c.is_control()))
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "X-Cachewarden-Actor: expected a name of 1 to 64 printable characters",
                    )
                })?;
            return Ok(Actor(format!("api:{name}")));
        }
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip().to_string())
            .unwrap_or_else(|| "unknown".into());
        Ok(Actor(format!("api@{peer}")))
    }
}

async fn views(ctx: &Ctx, only: Option<&str>) -> Result<Vec<ConfigView>, ApiError> {
    let client = ctx.db().await?;
    let rows = client
        .query(
            "SELECT name, table_name, key_pattern, ttl, strategy, is_active, updated_at, \
                    updated_by, rule_file \
             FROM cache_configs WHERE $1::text IS NULL OR name = $1 ORDER BY name",
            &[&only],
        )
        .await
        .map_err(|e| ApiError::unavailable("postgres", e))?;
    let rules = ctx.status.rule_set();
    Ok(rows
        .iter()
        .map(|r| {
            let name: String = r.get(0);
            let ttl: Option<i32> = r.get(3);
            let strategy: String = r.get(4);
            let rule = rules
                .as_ref()
                .and_then(|s| s.rules.iter().find(|x| x.name == name));
            let mut drift = Vec::new();
            if let Some(rule) = rule {
                let file_ttl = rule.ttl.map(|t| i64::try_from(t).unwrap_or(i64::MAX));
                if ttl.map(i64::from) != file_ttl {
                    drift.push(format!(
                        "ttl is {} here but {} in the rule file",
                        ttl.map_or("unset".into(), |t| t.to_string()),
                        file_ttl.map_or("unset".into(), |t| t.to_string())
                    ));
                }
                if strategy != rule.strategy.as_str() {
                    drift.push(format!(
                        "strategy is {strategy:?} here but {:?} in the rule file",
                        rule.strategy.as_str()
                    ));
                }
            }
            let file: Option<String> = r.get(8);
            ConfigView {
                table: r.get(1),
                key_pattern: r.get(2),
                ttl,
                is_active: r.get(5),
                updated_at: r.get(6),
                updated_by: r.get(7),
                loaded: rule.is_some(),
                rule_file: rule.map(|x| x.at.file.display().to_string()).or(file),
                line: rule.map(|x| x.at.line),
                file_ttl: rule.and_then(|x| x.ttl.map(|t| i64::try_from(t).unwrap_or(i64::MAX))),
                file_strategy: rule.map(|x| x.strategy.as_str().to_string()),
                drift,
                strategy,
                name,
            }
        })
        .collect())
}

/// Every rule's configuration, with drift from the rule files.
#[utoipa::path(
    get,
    path = "/api/v1/configs",
    operation_id = "list_configs",
    tag = "configs",
    responses(
        (status = 200, description = "Every cache_configs row, by name", body = Vec<ConfigView>),
        (status = 401, description = "A token is needed", body = ErrorBody),
    ),
    security((), ("bearer" = []))
)]
pub async fn list(State(ctx): State<Arc<Ctx>>) -> Result<Json<Vec<ConfigView>>, ApiError> {
    Ok(Json(views(&ctx, None).await?))
}

/// Checks a patch against the rule it changes. Pure.
fn validate(patch: &ConfigPatch, rule: Option<&crate::rules::Rule>) -> Result<(), ApiError> {
    if let Some(t) = patch.ttl {
        if !(0..=i64::from(i32::MAX)).contains(&t) {
            return Err(ApiError::bad_request(format!(
                "ttl {t}: expected 0 to {} seconds",
                i32::MAX
            )));
        }
    }
    if let Some(s) = patch.strategy {
        if s != StrategyName::Invalidate && rule.is_some_and(|r| r.warm.is_none()) {
            return Err(ApiError {
                status: axum::http::StatusCode::CONFLICT,
                detail: format!(
                    "strategy {:?} needs a [rule.warm] section (key and query) in the rule file",
                    s.as_str()
                ),
            });
        }
    }
    Ok(())
}

/// Changes one rule's switch, TTL or strategy.
#[utoipa::path(
    patch,
    path = "/api/v1/configs/{rule}",
    operation_id = "patch_config",
    tag = "configs",
    params(("rule" = String, Path, description = "The rule's name", min_length = 1, max_length = 1024, pattern = "^[^\\u0000]*$")),
    request_body = ConfigPatch,
    responses(
        (status = 200, description = "The row after the change", body = ConfigView),
        (status = 400, description = "Bad input", body = ErrorBody),
        (status = 401, description = "A token is needed", body = ErrorBody),
        (status = 403, description = "Writes are disabled (no [api] token)", body = ErrorBody),
        (status = 404, description = "No such rule", body = ErrorBody),
        (status = 409, description = "The change conflicts with the rule file (a strategy that needs [rule.warm])", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "The body is not JSON", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn patch(
    State(ctx): State<Arc<Ctx>>,
    Key(rule): Key,
    actor: Actor,
    Body(patch): Body<ConfigPatch>,
) -> Result<Json<ConfigView>, ApiError> {
    super::bounded("rule", &rule)?;
    let rules = ctx.status.rule_set();
    validate(
        &patch,
        rules
            .as_ref()
            .and_then(|s| s.rules.iter().find(|r| r.name == rule)),
    )?;
    let client = ctx.db().await?;
    if patch.is_active.is_none() && patch.ttl.is_none() && patch.strategy.is_none() {
        // Nothing to change: the row as it is.
        return views(&ctx, Some(&rule))
            .await?
            .pop()
            .map(Json)
            .ok_or_else(|| {
                ApiError::not_found(format!("no rule named {rule:?} in cache_configs"))
            });
    }
    let ttl = patch.ttl.map(|t| t as i32);
    let strategy = patch.strategy.map(StrategyName::as_str);
    let n = client
        .execute(
            "UPDATE cache_configs SET is_active = COALESCE($2, is_active), \
                 ttl = COALESCE($3, ttl), strategy = COALESCE($4, strategy), \
                 updated_at = now(), updated_by = $5 \
             WHERE name = $1",
            &[&rule, &patch.is_active, &ttl, &strategy, &actor.0],
        )
        .await
        .map_err(|e| ApiError::unavailable("postgres", e))?;
    if n == 0 {
        return Err(ApiError::not_found(format!(
            "no rule named {rule:?} in cache_configs"
        )));
    }
    tracing::info!(rule, actor = %actor.0, is_active = ?patch.is_active, ttl = ?patch.ttl, strategy = ?patch.strategy, "cache_configs changed through the API");
    let view = views(&ctx, Some(&rule))
        .await?
        .pop()
        .ok_or_else(|| ApiError::not_found(format!("no rule named {rule:?}")))?;
    ctx.config_changed(view.clone());
    Ok(Json(view))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patches_are_validated_against_the_rule() {
        let set = crate::rules::RuleSet::new(
            crate::rules::parse_file(
                std::path::Path::new("r.toml"),
                "[[rule]]\nname='c'\ntable='courses'\nkeys=['course:{id}']\n",
            )
            .unwrap(),
        );
        let rule = set.rules.first();
        let p = |is_active, ttl, strategy| ConfigPatch {
            is_active,
            ttl,
            strategy,
        };
        assert!(validate(&p(None, None, None), rule).is_ok());
        assert!(validate(&p(Some(false), None, None), rule).is_ok());
        assert!(validate(&p(None, Some(60), Some(StrategyName::Invalidate)), rule).is_ok());
        assert!(validate(&p(None, Some(-1), None), rule).is_err());
        assert!(validate(&p(None, Some(i64::from(i32::MAX) + 1), None), rule).is_err());
        let e = validate(&p(None, None, Some(StrategyName::Refresh)), rule).unwrap_err();
        assert_eq!(e.status, axum::http::StatusCode::CONFLICT);
        assert!(e.detail.contains("[rule.warm]"), "{}", e.detail);
        assert!(serde_json::from_str::<ConfigPatch>(r#"{"strategy": "lazy"}"#).is_err());
    }
}
