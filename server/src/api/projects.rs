//! Projects.

use actix_web::{HttpRequest, HttpResponse, web};
use serde::Serialize;

use super::views::ProjectView;
use crate::AppState;
use crate::db::projects;
use crate::error::AppError;

#[derive(Debug, Serialize)]
struct ProjectList {
    projects: Vec<ProjectView>,
}

/// `GET /api/v1/projects`.
pub async fn list(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, AppError> {
    let pool = state.pool.clone();
    let all = web::block(move || -> Result<_, AppError> { Ok(projects::list(&mut *pool.get()?)?) }).await??;
    let base = super::base_url(&req);
    Ok(HttpResponse::Ok().json(ProjectList { projects: all.into_iter().map(|p| ProjectView::new(p, &base)).collect() }))
}

/// `GET /api/v1/projects/{p}`.
pub async fn get(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, AppError> {
    let name = path.into_inner();
    let pool = state.pool.clone();
    let lookup = name.clone();
    let p = web::block(move || -> Result<_, AppError> { Ok(projects::by_name(&mut *pool.get()?, &lookup)?) })
        .await??
        .ok_or_else(|| AppError::not_found(format!("no project named {name:?}")))?;
    Ok(HttpResponse::Ok().json(ProjectView::new(p, &super::base_url(&req))))
}
