//! Every URL the server answers, in one table.

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{ALLOW, HeaderValue};
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
            .service(api_res("/reports", "POST").route(web::post().to(api::reports::submit)))
            .service(api_res("/builders", "POST").route(web::post().to(api::builders::register)))
            .service(api_res("/builders/{name}", READ).route(read().to(api::builders::get)))
            .service(api_res("/openapi.json", READ).route(read().to(api::openapi::get)))
            .service(api_res("/projects", READ).route(read().to(api::projects::list)))
            .service(api_res("/projects/{project}", READ).route(read().to(api::projects::get)))
            .service(
                api_res("/projects/{project}/recipe", "GET, HEAD, PUT")
                    .route(web::put().to(api::recipes::publish))
                    .route(read().to(api::recipes::current)),
            )
            .service(api_res("/projects/{project}/recipes", READ).route(read().to(api::recipes::history)))
            .service(api_res("/projects/{project}/recipes/{version}", READ).route(read().to(api::recipes::version)))
            .service(
                api_res("/projects/{project}/keys", "GET, HEAD, PUT")
                    .route(web::put().to(api::recipes::publish_keys))
                    .route(read().to(api::recipes::keys)),
            )
            .service(api_res("/projects/{project}/signing-keys", READ).route(read().to(api::recipes::signing_keys)))
            .service(api_res("/projects/{project}/key-lists", READ).route(read().to(api::recipes::key_list_history)))
            .service(
                api_res("/projects/{project}/key-lists/{version}", READ)
                    .route(read().to(api::recipes::key_list_version)),
            )
            .service(api_res("/projects/{project}/capabilities", READ).route(read().to(api::recipes::capabilities)))
            .service(
                api_res("/projects/{project}/requests", "GET, HEAD, POST")
                    .route(web::post().to(api::requests::create))
                    .route(read().to(api::requests::list)),
            )
            .service(api_res("/projects/{project}/requests/{id}", READ).route(read().to(api::requests::one)))
            .service(api_res("/leases", "POST").route(web::post().to(api::leases::take)))
            .service(api_res("/leases/{id}", "PUT").route(web::put().to(api::leases::renew)))
            .service(api_res("/projects/{project}/builds", READ).route(read().to(api::builds::list)))
            .service(api_res("/projects/{project}/builders", READ).route(read().to(api::status::builders)))
            .service(api_res("/projects/{project}/status", READ).route(read().to(api::status::status)))
            .service(api_res("/projects/{project}/revisions/{revision}", READ).route(read().to(api::status::revision)))
            .service(api_res("/projects/{project}/tests/failing", READ).route(read().to(api::status::failing)))
            .service(api_res("/projects/{project}/tests/history", READ).route(read().to(api::status::history)))
            .service(api_res("/projects/{project}/shields.json", READ).route(read().to(pages::feeds::shields)))
            .service(api_res("/builds/{id}", READ).route(read().to(api::builds::get)))
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
            .service(page("/", pages::index::page))
            .service(page("/projects/{project}", pages::waterfall::page))
            .service(page("/projects/{project}/console", pages::console::page))
            .service(page("/projects/{project}/requests", pages::requests::page))
            .service(page("/projects/{project}/tests", pages::tests::page))
            .service(page("/projects/{project}/tests/history", pages::tests::history))
            .service(page("/projects/{project}/feed.atom", pages::feeds::atom))
            .service(page("/projects/{project}/badge.svg", pages::feeds::badge))
            .service(page("/projects/{project}/cctray.xml", pages::feeds::cctray))
            .service(page("/projects/{project}/builders/{builder}/feed.atom", pages::feeds::builder_atom))
            .service(page("/projects/{project}/builders/{builder}/badge.svg", pages::feeds::builder_badge))
            .service(page("/metrics", crate::metrics::get))
            .service(page("/healthz", crate::health::healthz))
            .service(page("/projects/{project}/builders/{builder}", pages::builder::page))
            .service(page("/builds/{id}", pages::build::page))
            .service(page("/builds/{id}/steps/{position}/log", pages::logs::raw))
            .service(page("/static/{file}", pages::assets::get))
            .service(page("/favicon.ico", pages::assets::favicon))
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

/// What read-only resources allow.
const READ: &str = "GET, HEAD";

/// An API resource; a method it does not take is a 405 with `Allow` and the JSON error body.
fn api_res(path: &str, allow: &'static str) -> actix_web::Resource {
    web::resource(path).default_service(web::to(move || async move {
        let e = AppError::method_not_allowed(format!("this resource takes {allow}"));
        let mut res = actix_web::ResponseError::error_response(&e);
        res.headers_mut().insert(ALLOW, HeaderValue::from_static(allow));
        Ok::<_, actix_web::Error>(res)
    }))
}

/// A page (GET and HEAD); other methods are a 405 with `Allow`.
fn page<F, Args>(path: &str, handler: F) -> actix_web::Resource
where
    F: actix_web::Handler<Args>,
    Args: actix_web::FromRequest + 'static,
    F::Output: actix_web::Responder + 'static,
{
    web::resource(path).route(read().to(handler)).default_service(web::to(|| async {
        let e = PageError(AppError::method_not_allowed(format!("this page takes {READ}")));
        let mut res = actix_web::ResponseError::error_response(&e);
        res.headers_mut().insert(ALLOW, HeaderValue::from_static(READ));
        Ok::<_, actix_web::Error>(res)
    }))
}

async fn api_not_found() -> Result<HttpResponse, AppError> {
    Err(AppError::not_found("no such API endpoint"))
}

async fn page_not_found() -> Result<HttpResponse, PageError> {
    Err(AppError::not_found("There is no page here.").into())
}
