//! `/`: every project, with how its builders are doing.

use std::collections::HashMap;

use actix_web::{HttpResponse, web};
use tera::Context;

use crate::AppState;
use crate::db::{builders, projects, status};
use crate::error::{AppError, PageError};

/// `GET /`.
pub async fn page(state: web::Data<AppState>) -> Result<HttpResponse, PageError> {
    let pool = state.pool.clone();
    let (all, latest, seen) = web::block(move || -> Result<_, PageError> {
        let mut conn = pool.get()?;
        let all = projects::list(&mut conn)?;
        let latest = status::latest(&mut conn, None)?;
        let seen: HashMap<i64, Option<chrono::NaiveDateTime>> =
            builders::list(&mut conn)?.into_iter().map(|l| (l.builder.id, l.builder.last_report_at)).collect();
        Ok((all, latest, seen))
    })
    .await??;
    let now = crate::db::now();
    let summaries: Vec<serde_json::Value> = all
        .iter()
        .map(|p| {
            let mut counts: HashMap<&str, usize> = HashMap::new();
            for l in latest.iter().filter(|l| l.project_id == p.id) {
                let stale = seen.get(&l.builder_id).copied().flatten().is_none_or(|t| now - t > state.stale_after);
                let class = match &l.build {
                    _ if stale => "stale",
                    None => "nodata",
                    Some(b) => super::status::of_build(&b.state, b.result.as_deref(), l.failing_kind()).0,
                };
                let group = match class {
                    "success" | "warnings" => "green",
                    "failure" | "tests-failed" | "exception" => "red",
                    other => other,
                };
                *counts.entry(group).or_default() += 1;
            }
            serde_json::json!({"name": p.name, "title": p.title, "counts": counts})
        })
        .collect();
    let mut ctx = Context::new();
    ctx.insert("projects", &summaries);
    super::html(&super::templates::render("index.html", &ctx).map_err(AppError::from)?)
}
