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
            .route("/builders/{name}", web::get().to(api::builders::get))
            .route("/openapi.json", web::get().to(api::openapi::get))
            .route("/projects", web::get().to(api::projects::list))
            .route("/projects/{project}", web::get().to(api::projects::get))
            .route("/projects/{project}/builds", web::get().to(api::builds::list))
            .route("/projects/{project}/builders", web::get().to(api::status::builders))
            .route("/projects/{project}/status", web::get().to(api::status::status))
            .route("/projects/{project}/revisions/{revision}", web::get().to(api::status::revision))
            .route("/projects/{project}/tests/failing", web::get().to(api::status::failing))
            .route("/projects/{project}/tests/history", web::get().to(api::status::history))
            .route("/projects/{project}/shields.json", web::get().to(pages::feeds::shields))
            .route("/builds/{id}", web::get().to(api::builds::get))
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
            .route("/", web::get().to(pages::index::page))
            .route("/projects/{project}", web::get().to(pages::waterfall::page))
            .route("/projects/{project}/console", web::get().to(pages::console::page))
            .route("/projects/{project}/feed.atom", web::get().to(pages::feeds::atom))
            .route("/projects/{project}/badge.svg", web::get().to(pages::feeds::badge))
            .route("/projects/{project}/cctray.xml", web::get().to(pages::feeds::cctray))
            .route("/projects/{project}/builders/{builder}/feed.atom", web::get().to(pages::feeds::builder_atom))
            .route("/projects/{project}/builders/{builder}/badge.svg", web::get().to(pages::feeds::builder_badge))
            .route("/metrics", web::get().to(crate::metrics::get))
            .route("/projects/{project}/builders/{builder}", web::get().to(pages::builder::page))
            .route("/builds/{id}", web::get().to(pages::build::page))
            .route("/builds/{id}/steps/{position}/log", web::get().to(pages::logs::raw))
            .route("/static/{file}", web::get().to(pages::assets::get))
            .default_service(web::to(page_not_found)),
    );
}

async fn api_not_found() -> Result<HttpResponse, AppError> {
    Err(AppError::not_found("no such API endpoint"))
}

async fn page_not_found() -> Result<HttpResponse, PageError> {
    Err(AppError::not_found("There is no page here.").into())
}
