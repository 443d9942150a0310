//! `/`: the list of projects.

use actix_web::{HttpResponse, web};
use tera::Context;

use crate::AppState;
use crate::db::projects;
use crate::error::PageError;

/// `GET /`.
pub async fn page(state: web::Data<AppState>) -> Result<HttpResponse, PageError> {
    let pool = state.pool.clone();
    let all =
        web::block(move || -> Result<_, PageError> { Ok(projects::list(&mut *pool.get()?)?) })
            .await??;
    let mut ctx = Context::new();
    ctx.insert(
        "projects",
        &all.iter()
            .map(|p| serde_json::json!({"name": p.name, "title": p.title}))
            .collect::<Vec<_>>(),
    );
    super::html(
        &super::templates::render("index.html", &ctx).map_err(crate::error::AppError::from)?,
    )
}
