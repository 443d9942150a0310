//! `/static/…`: files embedded in the binary, so an installed server runs from anywhere.

use actix_web::http::header::{CONTENT_TYPE, CacheControl, CacheDirective};
use actix_web::{HttpResponse, web};

use crate::error::PageError;

const CSS: &str = include_str!("../../../static/tbox.css");
const JS: &str = include_str!("../../../static/tbox.js");
/// 16×16, a PNG inside an ICO: what browsers and link previews ask `/favicon.ico` for.
const ICON: &[u8] = include_bytes!("../../../static/favicon.ico");

/// A short digest of the embedded files, for cache-busting URLs (`?v=…`).
pub fn version() -> &'static str {
    static VERSION: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    VERSION.get_or_init(|| {
        use sha2::{Digest, Sha256};
        let digest = Sha256::new().chain_update(CSS).chain_update(JS).finalize();
        tbox_protocol::hex(&digest[..6])
    })
}

/// `GET /static/{file}`.
pub async fn get(path: web::Path<String>) -> Result<HttpResponse, PageError> {
    let (body, mime) = match path.as_str() {
        "tbox.css" => (CSS, "text/css; charset=utf-8"),
        "tbox.js" => (JS, "text/javascript; charset=utf-8"),
        other => {
            return Err(crate::error::AppError::not_found(format!("no static file {other:?}")).into());
        }
    };
    Ok(HttpResponse::Ok()
        .insert_header((CONTENT_TYPE, mime))
        .insert_header(CacheControl(vec![CacheDirective::Public, CacheDirective::MaxAge(7 * 86400)]))
        .body(body))
}

/// `GET /favicon.ico`.
pub async fn favicon() -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((CONTENT_TYPE, "image/x-icon"))
        .insert_header(CacheControl(vec![CacheDirective::Public, CacheDirective::MaxAge(7 * 86400)]))
        .body(ICON)
}
