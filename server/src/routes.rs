//! Every URL the server answers, in one table.

use actix_web::{HttpResponse, web};

use crate::error::{AppError, PageError};
use crate::{api, web as pages};

/// Mounts the API, the pages and the static files.
pub fn configure(cfg: &mut web::ServiceConfig, max_body: usize) {
    cfg.service(
        web::scope("/api/v1")
            .app_data(web::PathConfig::default().error_handler(|e, _| AppError::not_found(e.to_string()).into()))
            .app_data(
                web::QueryConfig::default()
                    .error_handler(|e, _| AppError::bad_request("bad_query", e.to_string()).into()),
            )
            .service(
                web::resource("/reports")
                    .app_data(web::PayloadConfig::new(max_body))
                    .route(web::post().to(api::reports::submit)),
            )
            .service(
                web::resource("/builders")
                    .app_data(web::PayloadConfig::new(64 << 10))
                    .route(web::post().to(api::builders::register)),
            )
            .route("/builders/{name}", read().to(api::builders::get))
            .route("/openapi.json", read().to(api::openapi::get))
            .route("/projects", read().to(api::projects::list))
            .route("/projects/{project}", read().to(api::projects::get))
            .route("/projects/{project}/builds", read().to(api::builds::list))
            .route("/projects/{project}/builders", read().to(api::status::builders))
            .route("/projects/{project}/status", read().to(api::status::status))
            .route("/projects/{project}/revisions/{revision}", read().to(api::status::revision))
            .route("/projects/{project}/tests/failing", read().to(api::status::failing))
            .route("/projects/{project}/tests/history", read().to(api::status::history))
            .route("/projects/{project}/shields.json", read().to(pages::feeds::shields))
            .route("/builds/{id}", read().to(api::builds::get))
            .default_service(web::to(api_not_found)),
    )
    .service(
        web::scope("")
            .app_data(
                web::PathConfig::default().error_handler(|e, _| PageError(AppError::not_found(e.to_string())).into()),
            )
            .app_data(
                web::QueryConfig::default()
                    .error_handler(|e, _| PageError(AppError::bad_request("bad_query", e.to_string())).into()),
            )
            .route("/", read().to(pages::index::page))
            .route("/projects/{project}", read().to(pages::waterfall::page))
            .route("/projects/{project}/console", read().to(pages::console::page))
            .route("/projects/{project}/feed.atom", read().to(pages::feeds::atom))
            .route("/projects/{project}/badge.svg", read().to(pages::feeds::badge))
            .route("/projects/{project}/cctray.xml", read().to(pages::feeds::cctray))
            .route("/projects/{project}/builders/{builder}/feed.atom", read().to(pages::feeds::builder_atom))
            .route("/projects/{project}/builders/{builder}/badge.svg", read().to(pages::feeds::builder_badge))
            .route("/metrics", read().to(crate::metrics::get))
            .route("/projects/{project}/builders/{builder}", read().to(pages::builder::page))
            .route("/builds/{id}", read().to(pages::build::page))
            .route("/builds/{id}/steps/{position}/log", read().to(pages::logs::raw))
            .route("/static/{file}", read().to(pages::assets::get))
            .default_service(web::to(page_not_found)),
    );
}

/// A route for GET and HEAD (link checkers and feed readers ask with HEAD; the server leaves
/// the body out of HEAD answers itself).
fn read() -> actix_web::Route {
    web::route().guard(actix_web::guard::Any(actix_web::guard::Get()).or(actix_web::guard::Head()))
}

async fn api_not_found() -> Result<HttpResponse, AppError> {
    Err(AppError::not_found("no such API endpoint"))
}

async fn page_not_found() -> Result<HttpResponse, PageError> {
    Err(AppError::not_found("There is no page here.").into())
}
