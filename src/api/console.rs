//! The web console at `/`: the Vue application built from `console/` by Vite
//! (`scripts/build-console.sh`), embedded in the binary by `build.rs` — no CDN and no files
//! at run time. Unknown paths under `/` that are not assets get `index.html` (the console
//! routes in the page). A binary built without the console says how to build it.

use axum::http::{header, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;

include!(concat!(env!("OUT_DIR"), "/console_assets.rs"));

/// The content type of an asset, by extension.
fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next().unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "json" => "application/json",
        "woff2" => "font/woff2",
        "txt" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

fn asset(path: &str) -> Option<&'static [u8]> {
    ASSETS
        .iter()
        .find(|(p, _)| *p == path)
        .map(|(_, bytes)| *bytes)
}

/// Whether this binary carries the console.
pub fn is_built() -> bool {
    asset("index.html").is_some()
}

async fn serve(uri: Uri) -> Response {
    let path = uri.path().trim_start_matches('/');
    let path = if path.is_empty() { "index.html" } else { path };
    if let Some(bytes) = asset(path) {
        // Vite names assets by content hash: they never change under their name.
        let cache = if path.starts_with("assets/") {
            "public, max-age=31536000, immutable"
        } else {
            "no-cache"
        };
        return (
            [
                (header::CONTENT_TYPE, content_type(path)),
                (header::CACHE_CONTROL, cache),
            ],
            bytes,
        )
            .into_response();
    }
    if path.starts_with("assets/") || path.starts_with("api/") {
        return (StatusCode::NOT_FOUND, "not found\n").into_response();
    }
    match asset("index.html") {
        Some(index) => (
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            index,
        )
            .into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "This cachewarden binary was built without its console: run scripts/build-console.sh \
             (Node.js and npm), then build again. The API is at /api/v1 (see /api/v1/openapi.json).\n",
        )
            .into_response(),
    }
}

/// `/` and every path no other route takes.
pub fn router() -> Router {
    Router::new().fallback(serve)
}
