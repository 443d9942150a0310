//! The JSON API under `/api/v1`.

pub mod builders;
pub mod builds;
pub mod leases;
pub mod openapi;
pub mod projects;
pub mod recipes;
pub mod reports;
pub mod requests;
pub mod status;
pub mod views;

use actix_web::HttpRequest;
use actix_web::http::header::{self, HeaderMap};

use crate::error::AppError;

/// The server's base URL for absolute links in answers and feeds: `serve --public-url` when
/// set (recommended in production: feeds are cached publicly, and a client must not choose the
/// host in them), otherwise the address the client used.
pub fn base_url(req: &HttpRequest) -> String {
    if let Some(url) = req.app_data::<actix_web::web::Data<crate::AppState>>().and_then(|s| s.public_url.clone()) {
        return url;
    }
    let info = req.connection_info();
    format!("{}://{}", info.scheme(), info.host())
}

/// 415 unless the body is `wanted` (parameters such as `charset` aside).
pub fn require_content_type(headers: &HeaderMap, wanted: &str) -> Result<(), AppError> {
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if ct.split(';').next().unwrap_or("").trim().eq_ignore_ascii_case(wanted) {
        return Ok(());
    }
    Err(AppError::unsupported_media_type(format!(
        "Content-Type must be {wanted}, got {:?}",
        if ct.is_empty() { "nothing" } else { ct }
    )))
}

/// The `Tbox-Signature` header of a request signed by a project key (a recipe, a rotation, a
/// build request); without it the body is not even read.
pub fn project_signature(headers: &HeaderMap) -> Result<String, AppError> {
    match headers.get("tbox-signature").map(|v| v.to_str().map(str::trim)) {
        Some(Ok(s)) if !s.is_empty() => Ok(s.to_owned()),
        Some(Err(_)) => Err(AppError::bad_request("bad_header", "Tbox-Signature header is not ASCII")),
        _ => Err(AppError::unauthorized("unsigned", "missing Tbox-Signature header (a project key's signature)")),
    }
}
