//! Builds: a project's list (newest first, cursor-paginated) and one build in full.

use actix_web::{HttpRequest, HttpResponse, web};
use serde::{Deserialize, Serialize};

use super::views::{BuildDetail, BuildSummary};
use crate::AppState;
use crate::db::builds::{self, Cursor};
use crate::db::projects;
use crate::error::AppError;

/// Query of `GET /api/v1/projects/{p}/builds`.
#[derive(Debug, Deserialize)]
pub struct ListQuery {
    limit: Option<i64>,
    cursor: Option<String>,
    builder: Option<String>,
    branch: Option<String>,
    result: Option<String>,
    revision: Option<String>,
    since: Option<String>,
    until: Option<String>,
}

fn parse_time(field: &str, v: &Option<String>) -> Result<Option<chrono::NaiveDateTime>, AppError> {
    v.as_deref()
        .map(|t| {
            chrono::DateTime::parse_from_rfc3339(t)
                .map(crate::db::to_db_time)
                .map_err(|_| AppError::bad_request("bad_query", format!("{field}: not an RFC 3339 time: {t:?}")))
        })
        .transpose()
}

#[derive(Debug, Serialize)]
struct BuildList {
    builds: Vec<BuildSummary>,
    next: Option<String>,
}

/// Most builds one page holds.
pub const MAX_LIMIT: i64 = 500;

/// `GET /api/v1/projects/{p}/builds?limit=N&cursor=C`.
pub async fn list(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, AppError> {
    let project = path.into_inner();
    let limit = query.limit.unwrap_or(50);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(AppError::bad_request("bad_query", format!("limit must be 1 to {MAX_LIMIT}")));
    }
    // `cursor=` (empty) is the first page, as the OpenAPI document allows.
    let after = match query.cursor.as_deref().filter(|c| !c.is_empty()) {
        Some(c) => Some(
            Cursor::decode(c)
                .ok_or_else(|| AppError::bad_request("bad_query", "cursor is not one this server gave"))?,
        ),
        None => None,
    };
    if let Some(r) = &query.result
        && tbox_protocol::BuildResult::parse(r).is_none()
    {
        return Err(AppError::bad_request("bad_query", format!("result: unknown result {r:?}")));
    }
    let mut filter = builds::Filter {
        branch: query.branch.clone(),
        revision: query.revision.clone(),
        result: query.result.clone(),
        since: parse_time("since", &query.since)?,
        until: parse_time("until", &query.until)?,
        ..builds::Filter::default()
    };
    let builder = query.builder.clone();
    let pool = state.pool.clone();
    let rows = web::block(move || -> Result<_, AppError> {
        let mut conn = pool.get()?;
        let p = projects::by_name(&mut conn, &project)
            .map_err(AppError::from)?
            .ok_or_else(|| AppError::not_found(format!("no project named {project:?}")))?;
        if let Some(name) = builder {
            // An unknown builder simply has no builds.
            let id = crate::db::builders::by_name(&mut conn, &name)?.map(|b| b.id).unwrap_or(-1);
            filter.builders = Some(vec![id]);
        }
        // One extra row tells whether there is a next page.
        Ok(builds::newest(&mut conn, p.id, &filter, after, limit + 1)?)
    })
    .await??;
    let more = rows.len() as i64 > limit;
    let page: Vec<_> = rows.into_iter().take(limit as usize).collect();
    let next = if more {
        page.last().map(|l| Cursor { started_at: l.build.started_at, id: l.build.id }.encode())
    } else {
        None
    };
    let base = super::base_url(&req);
    Ok(HttpResponse::Ok()
        .json(BuildList { builds: page.into_iter().map(|l| BuildSummary::new(l, &base)).collect(), next }))
}

/// `GET /api/v1/builds/{id}`.
pub async fn get(req: HttpRequest, state: web::Data<AppState>, path: web::Path<i64>) -> Result<HttpResponse, AppError> {
    let id = path.into_inner();
    let pool = state.pool.clone();
    let (full, first) = web::block(move || -> Result<_, AppError> {
        let mut conn = pool.get()?;
        let full = builds::get(&mut conn, id)?.ok_or_else(|| AppError::not_found(format!("no build {id}")))?;
        let first = crate::results::errors::first_error(&mut conn, id, &full.steps)?;
        Ok((full, first))
    })
    .await??;
    let mut detail = BuildDetail::new(full, &super::base_url(&req));
    detail.first_error = first;
    Ok(HttpResponse::Ok().json(detail))
}
