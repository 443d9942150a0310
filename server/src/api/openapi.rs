//! `GET /api/v1/openapi.json`: the API described in OpenAPI 3, checked against real answers
//! by the tests.

use std::sync::LazyLock;

use actix_web::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use actix_web::{HttpRequest, HttpResponse};

/// The document (`openapi.json` beside this file).
pub const DOCUMENT: &str = include_str!("openapi.json");

/// The document, parsed once.
static PARSED: LazyLock<serde_json::Value> =
    LazyLock::new(|| serde_json::from_str(DOCUMENT).unwrap_or_else(|_| serde_json::json!({})));

/// `GET /api/v1/openapi.json`, with this server's base URL as its `servers` entry: the paths
/// (`/api/v1/…`) are relative to it, so that a client generated from the document calls
/// `https://host/ci/api/v1/…` under a sub-path rather than missing the `/ci`.
pub async fn get(req: HttpRequest) -> HttpResponse {
    let mut doc = PARSED.clone();
    if let Some(map) = doc.as_object_mut() {
        map.insert("servers".to_owned(), serde_json::json!([{ "url": super::base_url(&req) }]));
    }
    HttpResponse::Ok()
        .insert_header((CONTENT_TYPE, "application/json"))
        .insert_header((CACHE_CONTROL, "public, max-age=3600"))
        .body(doc.to_string())
}
