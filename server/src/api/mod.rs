//! The JSON API under `/api/v1`.

pub mod builders;
pub mod builds;
pub mod openapi;
pub mod projects;
pub mod reports;
pub mod status;
pub mod views;

use actix_web::HttpRequest;

/// The server's own base URL as the client reached it (honours `Forwarded` and
/// `X-Forwarded-*` from a reverse proxy), for absolute links in answers.
pub fn base_url(req: &HttpRequest) -> String {
    let info = req.connection_info();
    format!("{}://{}", info.scheme(), info.host())
}
