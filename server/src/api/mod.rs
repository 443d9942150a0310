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

use actix_web::http::header::{self, HeaderMap};
use actix_web::{HttpRequest, HttpResponse};

use crate::error::AppError;

/// The server's base URL for absolute links in answers and feeds: `serve --public-url` when
/// set (recommended in production: feeds are cached publicly, and a client must not choose the
/// host in them), otherwise the address the client used.
pub fn base_url(req: &HttpRequest) -> String {
    if let Some(url) = req.app_data::<actix_web::web::Data<crate::AppState>>().and_then(|s| s.public_url.clone()) {
        return url;
    }
    // Forwarded scheme and host only from a trusted proxy (actix's own connection info would
    // take them from anyone).
    let peer = req.peer_addr().map(|a| a.ip());
    let (scheme, host) = match req.app_data::<actix_web::web::Data<crate::AppState>>() {
        Some(s) => s.proxies.origin(peer, req.headers()),
        None => crate::proxy::TrustedProxies::default().origin(peer, req.headers()),
    };
    format!("{scheme}://{host}")
}

/// The request's `If-None-Match`, for a handler that checks its validator before the work.
pub fn if_none_match(req: &HttpRequest) -> Option<String> {
    req.headers().get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

/// Whether an `If-None-Match` value names `tag` (or `*`).
pub fn tag_matches(if_none_match: &str, tag: &str) -> bool {
    if_none_match.split(',').any(|t| t.trim() == tag || t.trim() == "*")
}

/// A short hex digest of some parts, to go into a validator (with this server's version: a new
/// release may render the same data otherwise).
pub fn tag_of(parts: &[&str]) -> String {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    h.update(env!("CARGO_PKG_VERSION").as_bytes());
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    tbox_protocol::hex(&h.finalize()[..6])
}

/// 304 for a validator that matched, with the headers a fresh answer would carry.
pub fn not_modified(tag: &str) -> HttpResponse {
    let mut res = HttpResponse::NotModified().finish();
    set_tag(&mut res, tag);
    res
}

/// Tags an answer with its validator (the ETag middleware then leaves it alone).
pub fn set_tag(res: &mut HttpResponse, tag: &str) {
    if let Ok(v) = header::HeaderValue::from_str(tag) {
        res.headers_mut().insert(header::ETAG, v);
        res.headers_mut().insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-cache"));
    }
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
