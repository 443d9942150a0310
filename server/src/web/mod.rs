//! Server-rendered pages (tera), the raw logs and the static files.

pub mod assets;
pub mod build;
pub mod builder;
pub mod console;
pub mod feeds;
pub mod index;
pub mod logs;
pub mod manners;
pub mod requests;
pub mod status;
pub mod templates;
pub mod tests;
pub mod waterfall;

use actix_web::HttpResponse;
use actix_web::http::header::ContentType;

use crate::error::PageError;

/// A rendered page as a response.
pub fn html(body: &str) -> Result<HttpResponse, PageError> {
    Ok(HttpResponse::Ok().content_type(ContentType::html()).body(body.to_owned()))
}

/// A project's revision-URL template filled in, or nothing when it has none.
pub fn revision_link(template: Option<&str>, revision: &str) -> Option<String> {
    template.filter(|t| t.contains("{rev}")).map(|t| t.replace("{rev}", revision))
}
