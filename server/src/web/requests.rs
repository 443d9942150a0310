//! `/projects/{p}/requests`: the builds a project asked for, and every attempt at them.

use actix_web::{HttpRequest, HttpResponse, web};
use tera::Context;

use super::waterfall::project_json;
use crate::AppState;
use crate::api::requests::views;
use crate::error::{AppError, PageError};

/// `GET /projects/{p}/requests`.
pub async fn page(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, PageError> {
    let name = path.into_inner();
    let pool = state.pool.clone();
    let base = crate::api::base_url(&req);
    let (project, requests) = web::block(move || -> Result<_, PageError> {
        let mut conn = pool.get()?;
        let p = crate::api::status::project(&mut conn, &name)?;
        let v = views(&mut conn, p.id, &base, 100)?;
        Ok((p, v))
    })
    .await??;
    let mut ctx = Context::new();
    ctx.insert("project", &project_json(&project));
    ctx.insert("requests", &requests);
    super::html(&super::templates::render("requests.html", &ctx).map_err(AppError::from)?)
}
