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
