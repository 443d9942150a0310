//! `/projects/{p}`: the waterfall. Time flows down, one column per builder.

use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};
use tera::Context;

use super::status;
use crate::AppState;
use crate::api::views::time;
use crate::db::builds::{self, Cursor};
use crate::db::{builders, projects};
use crate::error::{AppError, PageError};

/// Builds on one page.
const PAGE: i64 = 100;

/// Query of the waterfall page.
#[derive(Debug, Deserialize)]
pub struct Query {
    cursor: Option<String>,
}

#[derive(Serialize)]
struct Row {
    id: i64,
    column: usize,
    started_at: String,
    started_short: String,
    revision: String,
    revision_short: String,
    revision_url: Option<String>,
    branch: String,
    class: &'static str,
    glyph: &'static str,
    word: &'static str,
    steps: Vec<serde_json::Value>,
}

/// `GET /projects/{p}`.
pub async fn page(
    state: web::Data<AppState>,
    path: web::Path<String>,
    query: web::Query<Query>,
) -> Result<HttpResponse, PageError> {
    let name = path.into_inner();
    let after = match &query.cursor {
        Some(c) => Some(
            Cursor::decode(c)
                .ok_or_else(|| AppError::bad_request("bad_query", "unknown cursor"))?,
        ),
        None => None,
    };
    let pool = state.pool.clone();
    let (project, columns, rows) = web::block(move || -> Result<_, PageError> {
        let mut conn = pool.get()?;
        let project = projects::by_name(&mut conn, &name)?
            .ok_or_else(|| AppError::not_found(format!("no project named {name:?}")))?;
        let columns = builders::for_project(&mut conn, project.id)?;
        let rows = builds::newest(&mut conn, project.id, after, PAGE + 1)?;
        Ok((project, columns, rows))
    })
    .await??;

    let next = (rows.len() as i64 > PAGE)
        .then(|| {
            rows.get(PAGE as usize - 1).map(|l| {
                Cursor {
                    started_at: l.build.started_at,
                    id: l.build.id,
                }
                .encode()
            })
        })
        .flatten();
    let rows: Vec<Row> = rows
        .into_iter()
        .take(PAGE as usize)
        .filter_map(|l| {
            let column = columns.iter().position(|b| b.name == l.builder)?;
            let failing_kind = l
                .steps
                .iter()
                .find(|s| s.result == "failure")
                .and_then(|s| s.kind.as_deref());
            let (class, glyph, word) =
                status::of_build(&l.build.state, l.build.result.as_deref(), failing_kind);
            let b = l.build;
            Some(Row {
                id: b.id,
                column,
                started_at: time(b.started_at),
                started_short: b.started_at.format("%Y-%m-%d %H:%M").to_string(),
                revision_short: b.revision.chars().take(12).collect(),
                revision_url: super::revision_link(project.revision_url.as_deref(), &b.revision),
                revision: b.revision,
                branch: b.branch,
                class,
                glyph,
                word,
                steps: l
                    .steps
                    .into_iter()
                    .map(|s| serde_json::json!({"name": s.name, "result": s.result}))
                    .collect(),
            })
        })
        .collect();

    let mut ctx = Context::new();
    ctx.insert(
        "project",
        &serde_json::json!({"name": project.name, "title": project.title}),
    );
    ctx.insert(
        "builders",
        &columns
            .iter()
            .map(|b| serde_json::json!({"name": b.name, "status": b.status}))
            .collect::<Vec<_>>(),
    );
    ctx.insert("rows", &rows);
    ctx.insert("next", &next);
    super::html(&super::templates::render("waterfall.html", &ctx).map_err(AppError::from)?)
}
