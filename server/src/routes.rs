//! Every URL the server answers, in one table.

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{HttpResponse, web};

use crate::error::{AppError, PageError};
use crate::{api, web as pages};

/// Mounts the API, the pages and the static files.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/api/v1")
            .app_data(web::PathConfig::default().error_handler(|e, _| AppError::not_found(e.to_string()).into()))
            .app_data(
                web::QueryConfig::default()
                    .error_handler(|e, _| AppError::bad_request("bad_query", e.to_string()).into()),
            )
            .route("/reports", web::post().to(api::reports::submit))
            .route("/builders", web::post().to(api::builders::register))
            .route("/builders/{name}", read().to(api::builders::get))
            .route("/openapi.json", read().to(api::openapi::get))
            .route("/projects", read().to(api::projects::list))
            .route("/projects/{project}", read().to(api::projects::get))
            .route("/projects/{project}/recipe", web::put().to(api::recipes::publish))
            .route("/projects/{project}/recipe", read().to(api::recipes::current))
            .route("/projects/{project}/recipes", read().to(api::recipes::history))
            .route("/projects/{project}/recipes/{version}", read().to(api::recipes::version))
            .route("/projects/{project}/keys", web::post().to(api::recipes::rotate))
            .route("/projects/{project}/keys", read().to(api::recipes::keys))
            .route("/projects/{project}/capabilities", read().to(api::recipes::capabilities))
            .route("/projects/{project}/requests", web::post().to(api::requests::create))
            .route("/projects/{project}/requests", read().to(api::requests::list))
            .route("/leases", web::post().to(api::leases::take))
            .route("/leases/{id}", web::put().to(api::leases::renew))
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
            .route("/projects/{project}/requests", read().to(pages::requests::page))
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

/// Refuses a URL whose path or query hides a NUL byte (`%00`), before any handler sees it.
///
/// No name, cursor or filter of ours may hold one, and PostgreSQL cannot even compare a text
/// with one (it answered 500 where SQLite found nothing); one check here keeps both backends
/// answering alike, whichever parameter carries it.
pub async fn reject_nul(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let uri = req.uri();
    let raw = [uri.path(), uri.query().unwrap_or("")];
    if raw.iter().any(|part| part.contains('\0') || part.as_bytes().windows(3).any(|w| w.eq_ignore_ascii_case(b"%00")))
    {
        let e = AppError::bad_request("bad_url", "the URL contains a NUL byte (%00)");
        let res = if req.path().starts_with("/api/") {
            actix_web::ResponseError::error_response(&e)
        } else {
            actix_web::ResponseError::error_response(&PageError(e))
        };
        return Ok(req.into_response(res));
    }
    Ok(next.call(req).await?.map_into_boxed_body())
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
