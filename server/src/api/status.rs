//! Where a project stands, for programs: latest per builder and branch, builders, one
//! revision across builders, failing tests and one test's history.

use actix_web::{HttpRequest, HttpResponse, web};
use serde::{Deserialize, Serialize};

use super::views::{BuildSummary, time};
use crate::AppState;
use crate::db::builds::{self, Filter};
use crate::db::models::Project;
use crate::db::status::{Head, heads};
use crate::db::{DbConn, builders as builders_db, projects};
use crate::error::AppError;
use crate::results::failing::{failing_tag, failing_tests, test_history};
use crate::results::verdict::{is_stale, of};

/// Loads a project or answers 404.
pub fn project(conn: &mut DbConn, name: &str) -> Result<Project, AppError> {
    projects::by_name(conn, name)?.ok_or_else(|| AppError::not_found(format!("no project named {name:?}")))
}

/// A head as programs see it.
#[derive(Debug, Serialize)]
pub struct HeadView {
    pub builder: String,
    pub branch: String,
    pub state: String,
    pub result: Option<String>,
    /// The result in words, as on the waterfall: "success", "tests failed", "failed", …
    pub status: &'static str,
    pub stale: bool,
    pub build: i64,
    pub revision: String,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub url: String,
}

impl HeadView {
    pub fn new(h: &Head, base: &str, stale_after: chrono::TimeDelta) -> HeadView {
        let b = &h.build;
        HeadView {
            builder: h.builder.name.clone(),
            branch: b.branch.clone(),
            state: b.shown_state().to_owned(),
            result: b.shown_result().map(str::to_owned),
            status: of(b, h.failing_kind.as_deref()).2,
            stale: is_stale(h.builder.last_report_at, stale_after),
            build: b.id,
            revision: b.revision.clone(),
            started_at: time(b.started_at),
            finished_at: b.finished_at.map(time),
            url: format!("{base}/builds/{}", b.id),
        }
    }
}

/// Query narrowing heads.
#[derive(Debug, Deserialize)]
pub struct HeadQuery {
    pub builder: Option<String>,
    pub branch: Option<String>,
}

/// `GET /api/v1/projects/{p}/status`: the newest build of every builder on every branch.
pub async fn status(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
    q: web::Query<HeadQuery>,
) -> Result<HttpResponse, AppError> {
    let name = path.into_inner();
    let pool = state.pool.clone();
    let q = q.into_inner();
    let (p, hs) = web::block(move || -> Result<_, AppError> {
        let mut conn = pool.get()?;
        let p = project(&mut conn, &name)?;
        let hs = heads(&mut conn, p.id, q.builder.as_deref(), q.branch.as_deref())?;
        Ok((p, hs))
    })
    .await??;
    let base = super::base_url(&req);
    let views: Vec<HeadView> = hs.iter().map(|h| HeadView::new(h, &base, state.stale_after)).collect();
    Ok(HttpResponse::Ok().json(serde_json::json!({"project": p.name, "status": views})))
}

/// `GET /api/v1/projects/{p}/builders`: each builder with its latest result per branch.
pub async fn builders(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, AppError> {
    let name = path.into_inner();
    let pname = name.clone();
    let pool = state.pool.clone();
    let (all, hs) = web::block(move || -> Result<_, AppError> {
        let mut conn = pool.get()?;
        let p = project(&mut conn, &name)?;
        Ok((builders_db::for_project(&mut conn, p.id)?, heads(&mut conn, p.id, None, None)?))
    })
    .await??;
    let base = super::base_url(&req);
    let list: Vec<serde_json::Value> = all
        .iter()
        .map(|b| {
            let branches: Vec<HeadView> = hs
                .iter()
                .filter(|h| h.builder.id == b.id)
                .map(|h| HeadView::new(h, &base, state.stale_after))
                .collect();
            serde_json::json!({
                "name": b.name, "status": b.status, "owner": b.owner,
                "agreement": {"agreed": b.agreed, "disputed": b.disputed},
                "stale": is_stale(b.last_report_at, state.stale_after),
                "last_seen": b.last_report_at.map(time),
                "properties": serde_json::from_str::<serde_json::Value>(&b.properties).unwrap_or_default(),
                "url": format!("{base}/projects/{pname}/builders/{}", b.name),
                "branches": branches,
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(serde_json::json!({ "builders": list })))
}

/// `GET /api/v1/projects/{p}/revisions/{rev}`: every builder's builds of one revision.
pub async fn revision(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, AppError> {
    let (name, rev) = path.into_inner();
    let pool = state.pool.clone();
    let rev2 = rev.clone();
    let rows = web::block(move || -> Result<_, AppError> {
        let mut conn = pool.get()?;
        let p = project(&mut conn, &name)?;
        let filter = Filter { revision: Some(rev2), ..Filter::default() };
        Ok(builds::newest(&mut conn, p.id, &filter, None, 1000)?)
    })
    .await??;
    let base = super::base_url(&req);
    let list: Vec<BuildSummary> = rows.into_iter().map(|l| BuildSummary::new(l, &base)).collect();
    Ok(HttpResponse::Ok().json(serde_json::json!({"revision": rev, "builds": list})))
}

/// `GET /api/v1/projects/{p}/tests/failing`: tests failing in the newest build of each builder
/// and branch, and since which build they have been failing there.
pub async fn failing(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
    q: web::Query<HeadQuery>,
) -> Result<HttpResponse, AppError> {
    let name = path.into_inner();
    let q = q.into_inner();
    let pool = state.pool.clone();
    let base = super::base_url(&req);
    let if_none_match = super::if_none_match(&req);
    let found = web::block(move || -> Result<_, AppError> {
        let mut conn = pool.get()?;
        let p = project(&mut conn, &name)?;
        let tag = failing_tag(&mut conn, p.id, q.builder.as_deref(), q.branch.as_deref())?;
        if if_none_match.as_deref().is_some_and(|v| super::tag_matches(v, &tag)) {
            return Ok(Err(tag));
        }
        Ok(Ok((failing_tests(&mut conn, p.id, q.builder.as_deref(), q.branch.as_deref(), &base)?, tag)))
    })
    .await??;
    match found {
        Ok((list, tag)) => {
            let mut res = HttpResponse::Ok().json(serde_json::json!({ "failing": list }));
            super::set_tag(&mut res, &tag);
            Ok(res)
        }
        Err(tag) => Ok(super::not_modified(&tag)),
    }
}

/// Query of the test history.
#[derive(Debug, Deserialize)]
pub struct HistoryQuery {
    pub name: Option<String>,
    pub suite: Option<String>,
    pub builder: Option<String>,
    pub limit: Option<i64>,
}

/// `GET /api/v1/projects/{p}/tests/history?name=…[&suite=…][&builder=…]`: one test's results
/// across builders, newest first, among the project's newest [`HISTORY_WINDOW`](crate::results::failing::HISTORY_WINDOW) builds.
pub async fn history(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
    q: web::Query<HistoryQuery>,
) -> Result<HttpResponse, AppError> {
    let name = path.into_inner();
    let q = q.into_inner();
    let test = test_name(q.name.as_deref())?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(AppError::bad_request("bad_query", "limit must be 1 to 1000"));
    }
    let pool = state.pool.clone();
    let base = super::base_url(&req);
    let test2 = test.clone();
    let list = web::block(move || -> Result<_, AppError> {
        let mut conn = pool.get()?;
        let p = project(&mut conn, &name)?;
        test_history(&mut conn, p.id, &test2, q.suite.as_deref(), q.builder.as_deref(), limit, &base)
    })
    .await??;
    Ok(HttpResponse::Ok().json(serde_json::json!({"name": test, "results": list})))
}

/// The `name` of a test history query: it must be given (400 otherwise).
pub fn test_name(name: Option<&str>) -> Result<String, AppError> {
    name.filter(|n| !n.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| AppError::bad_request("bad_query", "name: give the test's name"))
}
