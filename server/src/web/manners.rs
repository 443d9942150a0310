//! HTTP manners for every GET: an `ETag` with `If-None-Match` → 304, a `Cache-Control` that
//! suits the resource, and `Access-Control-Allow-Origin: *` on the read-only feeds and API.
//! (Compression is actix's `Compress`, wrapped outside this so the tag is of the plain body.)

use actix_web::body::{BoxBody, MessageBody, to_bytes};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::{Method, StatusCode};
use actix_web::middleware::Next;
use actix_web::{Error, HttpResponse};
use sha2::{Digest, Sha256};

/// Bodies larger than this are passed through untagged (raw logs carry their own caching).
const MAX_TAGGED: usize = 8 << 20;

/// The middleware function.
pub async fn etag(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, Error> {
    let get = matches!(*req.method(), Method::GET | Method::HEAD);
    let path = req.path().to_owned();
    let if_none_match = req.headers().get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let res = next.call(req).await?;
    if !get {
        return Ok(res.map_into_boxed_body());
    }
    let feed = path.starts_with("/api/")
        || path.ends_with(".atom")
        || path.ends_with(".svg")
        || path.ends_with(".xml")
        || path == "/metrics";
    let (req, mut res) = res.into_parts();
    if feed {
        res.headers_mut().insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    }
    if res.status() != StatusCode::OK || res.body().size() == actix_web::body::BodySize::Stream {
        return Ok(ServiceResponse::new(req, res.map_into_boxed_body()));
    }
    if res.headers().contains_key(header::ETAG) {
        // The handler tags it itself (a recipe: the SHA-256 of its bytes) and answered 304 already.
        return Ok(ServiceResponse::new(req, res.map_into_boxed_body()));
    }
    if !res.headers().contains_key(header::CACHE_CONTROL) {
        // Pages and the API change with every report: revalidate (cheaply, thanks to the tag).
        res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    }
    let (head, body) = res.into_parts();
    let bytes = match to_bytes(body).await {
        Ok(b) => b,
        Err(_) => return Ok(ServiceResponse::new(req, HttpResponse::InternalServerError().finish())),
    };
    let mut res = head.set_body(bytes.clone()).map_into_boxed_body();
    if bytes.len() > MAX_TAGGED {
        return Ok(ServiceResponse::new(req, res));
    }
    let digest = Sha256::digest(&bytes);
    let tag = format!("W/\"{}\"", tbox_protocol::hex(&digest[..12]));
    let matches = if_none_match.is_some_and(|v| v.split(',').any(|t| t.trim() == tag || t.trim() == "*"));
    if let Ok(v) = HeaderValue::from_str(&tag) {
        res.headers_mut().insert(header::ETAG, v);
    }
    if matches {
        let mut not_modified = HttpResponse::NotModified().finish();
        for name in [header::ETAG, header::CACHE_CONTROL, header::ACCESS_CONTROL_ALLOW_ORIGIN] {
            if let Some(v) = res.headers().get(&name) {
                not_modified.headers_mut().insert(name, v.clone());
            }
        }
        return Ok(ServiceResponse::new(req, not_modified));
    }
    Ok(ServiceResponse::new(req, res))
}
