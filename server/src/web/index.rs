//! `/`: every project, with how its builders are doing.

use actix_web::{HttpResponse, web};
use tera::Context;

use crate::AppState;
use crate::db::projects;
use crate::error::{AppError, PageError};
use crate::results::summary::summaries;

/// `GET /`.
pub async fn page(state: web::Data<AppState>) -> Result<HttpResponse, PageError> {
    let pool = state.pool.clone();
    let stale_after = state.stale_after;
    let (all, counts) = web::block(move || -> Result<_, PageError> {
        let mut conn = pool.get()?;
        Ok((projects::list(&mut conn)?, summaries(&mut conn, None, stale_after)?))
    })
    .await??;
    let list: Vec<serde_json::Value> = all
        .iter()
        .map(|p| serde_json::json!({"name": p.name, "title": p.title, "counts": counts.get(&p.id).cloned().unwrap_or_default()}))
        .collect();
    let mut ctx = Context::new();
    ctx.insert("projects", &list);
    super::html(&super::templates::render("index.html", &ctx).map_err(AppError::from)?)
}
