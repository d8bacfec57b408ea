//! The OpenAPI 3.1 document of `/api/v1`, generated from the handlers' annotations and the
//! request and response types (utoipa), never written by hand. Served at
//! `/api/v1/openapi.json`.

use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{advice, configs, error, events, health, invalidations, keys, stats};

/// The bearer token scheme (`[api] token`).
struct Bearer;

impl Modify for Bearer {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        let components = api.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "[api] token (or CACHEWARDEN_API_TOKEN). State-changing calls always \
                         need it; read calls only when [status] listen is not a loopback address.",
                    ))
                    .build(),
            ),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "cachewarden operator API",
        description = "Inspect and set cache keys, run journaled invalidations, read the figures \
                       and switch rules of a running cachewarden worker. Keys, patterns and tags \
                       are the application's: the worker applies [redis] key_prefix unless \
                       ?raw=true. Errors are JSON {error, detail}."
    ),
    paths(
        keys::get_key,
        keys::put_key,
        keys::delete_key,
        invalidations::create,
        invalidations::list,
        stats::stats,
        advice::advice,
        configs::list,
        configs::patch,
        events::stream,
    ),
    components(schemas(
        error::ErrorBody,
        health::Readiness,
        keys::KeyInfo,
        keys::KeyRule,
        keys::PutKey,
        keys::PutText,
        keys::PutBytes,
        keys::PutResult,
        keys::Invalidated,
        invalidations::NewInvalidation,
        invalidations::PatternRequest,
        invalidations::KeysRequest,
        invalidations::TagsRequest,
        invalidations::DryRun,
        invalidations::Invalidation,
        invalidations::InvalidationPage,
        invalidations::Name,
        stats::Stats,
        stats::MetricPoint,
        stats::InvalidationPoint,
        stats::RuleStats,
        stats::RedisNow,
        advice::Advice,
        crate::advice::Suggestion,
        configs::ConfigView,
        configs::ConfigPatch,
        events::Event,
        events::RulesState,
    )),
    modifiers(&Bearer),
    tags(
        (name = "keys", description = "One key: inspect, set, delete"),
        (name = "invalidations", description = "Run invalidations; page through the journal"),
        (name = "stats", description = "Figures over a window, for charts"),
        (name = "configs", description = "Rule switches, TTL and strategy in cache_configs"),
        (name = "events", description = "Server-sent events for live views"),
    )
)]
pub struct ApiDoc;

/// The document (built once per call; it is small).
pub fn spec() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// `GET /api/v1/openapi.json`.
pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(spec())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_document_is_openapi_3_1_with_every_endpoint_and_the_bearer_scheme() {
        let v = serde_json::to_value(super::spec()).unwrap();
        assert_eq!(v["openapi"], "3.1.0");
        for (path, method) in [
            ("/api/v1/keys/{key}", "get"),
            ("/api/v1/keys/{key}", "put"),
            ("/api/v1/keys/{key}", "delete"),
            ("/api/v1/invalidations", "post"),
            ("/api/v1/invalidations", "get"),
            ("/api/v1/stats", "get"),
            ("/api/v1/advice", "get"),
            ("/api/v1/configs", "get"),
            ("/api/v1/configs/{rule}", "patch"),
            ("/api/v1/events", "get"),
        ] {
            assert!(v["paths"][path][method].is_object(), "{method} {path}");
        }
        assert_eq!(
            v["components"]["securitySchemes"]["bearer"]["scheme"],
            "bearer"
        );
    }
}
