//! Projects, each with how its builders are doing.

use actix_web::{HttpRequest, HttpResponse, web};
use serde::Serialize;

use super::views::ProjectView;
use crate::AppState;
use crate::db::projects;
use crate::error::AppError;
use crate::results::summary::summaries;

#[derive(Debug, Serialize)]
struct ProjectList {
    projects: Vec<ProjectView>,
}

/// `GET /api/v1/projects`.
pub async fn list(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, AppError> {
    let pool = state.pool.clone();
    let stale_after = state.stale_after;
    let (all, counts) = web::block(move || -> Result<_, AppError> {
        let mut conn = pool.get()?;
        Ok((projects::list(&mut conn)?, summaries(&mut conn, None, stale_after)?))
    })
    .await??;
    let base = super::base_url(&req);
    let projects = all
        .into_iter()
        .map(|p| {
            let c = counts.get(&p.id).cloned().unwrap_or_default();
            ProjectView::new(p, &base, c)
        })
        .collect();
    Ok(HttpResponse::Ok().json(ProjectList { projects }))
}

/// `GET /api/v1/projects/{p}`.
pub async fn get(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, AppError> {
    let name = path.into_inner();
    let pool = state.pool.clone();
    let stale_after = state.stale_after;
    let (p, counts) = web::block(move || -> Result<_, AppError> {
        let mut conn = pool.get()?;
        let p = super::status::project(&mut conn, &name)?;
        let counts = summaries(&mut conn, Some(p.id), stale_after)?;
        Ok((p, counts))
    })
    .await??;
    let c = counts.get(&p.id).cloned().unwrap_or_default();
    Ok(HttpResponse::Ok().json(ProjectView::new(p, &super::base_url(&req), c)))
}
