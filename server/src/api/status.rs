//! Where a project stands, for programs: latest per builder and branch, builders, one
//! revision across builders, failing tests and one test's history.

use std::collections::HashMap;

use actix_web::{HttpRequest, HttpResponse, web};
use chrono::NaiveDateTime;
use diesel::prelude::*;
use serde::{Deserialize, Serialize};

use super::views::{BuildSummary, time};
use crate::AppState;
use crate::db::builds::{self, Filter};
use crate::db::models::{Build, Project};
use crate::db::schema::{builders, builds as builds_t, test_results};
use crate::db::status::{Head, heads};
use crate::db::{DbConn, builders as builders_db, projects};
use crate::error::AppError;
use crate::web::status::of_build;

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
            status: of_build(&b.state, b.result.as_deref(), h.failing_kind.as_deref()).2,
            stale: is_stale(h.builder.last_report_at, stale_after),
            build: b.id,
            revision: b.revision.clone(),
            started_at: time(b.started_at),
            finished_at: b.finished_at.map(time),
            url: format!("{base}/builds/{}", b.id),
        }
    }
}

/// Not heard from within `stale_after` (or never).
pub fn is_stale(last: Option<NaiveDateTime>, stale_after: chrono::TimeDelta) -> bool {
    last.is_none_or(|t| crate::db::now() - t > stale_after)
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

/// Failing tests whose "since" is worked out at most (each costs two indexed queries).
const MAX_FAILING: usize = 200;

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

/// Tests failing in the newest finished build of each builder and branch, with since when and
/// whether they are flaky there (the API's `tests/failing` and the tests page): read from the
/// results as stored (`results::tests` decided at ingest), a bounded number of rows whatever
/// the history behind them.
pub fn failing_tests(
    conn: &mut DbConn,
    project_id: i64,
    builder: Option<&str>,
    branch: Option<&str>,
    base: &str,
) -> Result<Vec<serde_json::Value>, AppError> {
    let hs: Vec<Head> =
        heads(conn, project_id, builder, branch)?.into_iter().filter(|h| h.build.state == "finished").collect();
    let ids: Vec<i64> = hs.iter().map(|h| h.build.id).collect();
    type Row = (i64, String, String, String, Option<String>, Option<i64>, bool);
    let failing: Vec<Row> = test_results::table
        .filter(test_results::build_id.eq_any(&ids))
        .filter(test_results::result.eq_any(["failed", "error"]))
        .order((test_results::build_id, test_results::suite, test_results::name))
        .limit(MAX_FAILING as i64)
        .select((
            test_results::build_id,
            test_results::suite,
            test_results::name,
            test_results::result,
            test_results::message,
            test_results::since_build_id,
            test_results::flaky,
        ))
        .load(conn)?;
    let mut since_ids: Vec<i64> = failing.iter().filter_map(|r| r.5).collect();
    since_ids.sort_unstable();
    since_ids.dedup();
    let since_builds: HashMap<i64, Build> = builds_t::table
        .filter(builds_t::id.eq_any(&since_ids))
        .select(Build::as_select())
        .load(conn)?
        .into_iter()
        .map(|b| (b.id, b))
        .collect();
    let by_build: HashMap<i64, &Head> = hs.iter().map(|h| (h.build.id, h)).collect();
    let mut out = Vec::new();
    for (build_id, suite, test, result, message, since_id, flaky) in failing {
        let Some(h) = by_build.get(&build_id) else { continue };
        // Stored before this was decided at ingest: since this build, as far as is known.
        let since = since_id.and_then(|id| since_builds.get(&id)).unwrap_or(&h.build);
        out.push(serde_json::json!({
            "suite": suite, "name": test, "result": result, "message": message,
            "builder": h.builder.name, "branch": h.build.branch, "build": build_id,
            "revision": h.build.revision, "url": format!("{base}/builds/{build_id}"), "flaky": flaky,
            "since": {"build": since.id, "revision": since.revision,
                "started_at": time(since.started_at), "url": format!("{base}/builds/{}", since.id)},
        }));
    }
    Ok(out)
}

/// A validator for the failing tests of a project, from its heads alone (what a build means is
/// stored with it and never changes): compared before any of the work is done.
pub fn failing_tag(
    conn: &mut DbConn,
    project_id: i64,
    builder: Option<&str>,
    branch: Option<&str>,
) -> Result<String, AppError> {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    for head in heads(conn, project_id, builder, branch)? {
        h.update(format!("{}:{}:{};", head.build.id, head.build.state, head.build.branch).as_bytes());
    }
    Ok(format!("W/\"f{}\"", h.finalize().iter().take(12).map(|b| format!("{b:02x}")).collect::<String>()))
}

/// How many of a project's newest builds a test history looks through.
pub const HISTORY_WINDOW: i64 = 10_000;

/// Query of the test history.
#[derive(Debug, Deserialize)]
pub struct HistoryQuery {
    pub name: Option<String>,
    pub suite: Option<String>,
    pub builder: Option<String>,
    pub limit: Option<i64>,
}

/// `GET /api/v1/projects/{p}/tests/history?name=…[&suite=…][&builder=…]`: one test's results
/// across builders, newest first, among the project's newest [`HISTORY_WINDOW`] builds.
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

/// One test's results across builders, newest first, among the project's newest
/// [`HISTORY_WINDOW`] builds (the API's `tests/history` and the history page).
pub fn test_history(
    conn: &mut DbConn,
    project_id: i64,
    test: &str,
    suite: Option<&str>,
    builder: Option<&str>,
    limit: i64,
    base: &str,
) -> Result<Vec<serde_json::Value>, AppError> {
    // The newest builds of the project, each one's tests read through test_results_build:
    // a history covers the last HISTORY_WINDOW builds, whatever the number stored.
    let oldest: Option<NaiveDateTime> = builds_t::table
        .filter(builds_t::project_id.eq(project_id))
        .order((builds_t::started_at.desc(), builds_t::id.desc()))
        .offset(HISTORY_WINDOW - 1)
        .select(builds_t::started_at)
        .first(conn)
        .optional()?;
    let mut query = test_results::table
        .inner_join(builds_t::table.inner_join(builders::table))
        .filter(test_results::name.eq(test.to_owned()))
        .filter(builds_t::project_id.eq(project_id))
        .filter(builders::status.eq(builders_db::ACTIVE))
        .order((builds_t::started_at.desc(), builds_t::id.desc()))
        .limit(limit)
        .select((
            builds_t::id,
            builders::name,
            builds_t::branch,
            builds_t::revision,
            builds_t::started_at,
            test_results::suite,
            test_results::result,
            test_results::duration_ms,
            test_results::message,
        ))
        .into_boxed();
    if let Some(t) = oldest {
        query = query.filter(builds_t::started_at.ge(t));
    }
    if let Some(s) = suite {
        query = query.filter(test_results::suite.eq(s.to_owned()));
    }
    if let Some(b) = builder {
        query = query.filter(builders::name.eq(b.to_owned()));
    }
    type Row = (i64, String, String, String, NaiveDateTime, String, String, Option<i64>, Option<String>);
    let rows: Vec<Row> = query.load(conn)?;
    Ok(rows
        .into_iter()
        .map(|(id, builder, branch, revision, started, suite, result, duration, message)| {
            serde_json::json!({"build": id, "url": format!("{base}/builds/{id}"), "builder": builder, "branch": branch,
                "revision": revision, "started_at": time(started), "suite": suite, "result": result,
                "duration_ms": duration, "message": message})
        })
        .collect())
}

/// Builders of each project by colour: green, red, building, lost, stale, nodata (newest build of each
/// builder, whatever its branch). Keyed by project id.
pub fn summaries(
    conn: &mut DbConn,
    project: Option<i64>,
    stale_after: chrono::TimeDelta,
) -> QueryResult<HashMap<i64, std::collections::BTreeMap<&'static str, usize>>> {
    let latest = crate::db::status::latest(conn, project)?;
    let seen = builders_db::last_seen(conn)?;
    let mut out: HashMap<i64, std::collections::BTreeMap<&'static str, usize>> = HashMap::new();
    for l in &latest {
        let stale = is_stale(seen.get(&l.builder_id).copied().flatten(), stale_after);
        let class = match &l.build {
            _ if stale => "stale",
            None => "nodata",
            Some(b) => of_build(&b.state, b.result.as_deref(), l.failing_kind()).0,
        };
        // Red, and which red: the pages colour each as the legend does.
        let group = match class {
            "success" | "warnings" => "green",
            "failure" => "failed",
            "tests-failed" => "tests_failed",
            "exception" => "exception",
            "building" => "building",
            "lost" => "lost",
            "stale" => "stale",
            _ => "nodata",
        };
        let counts = out.entry(l.project_id).or_default();
        *counts.entry(group).or_default() += 1;
        if matches!(group, "failed" | "tests_failed" | "exception") {
            *counts.entry("red").or_default() += 1;
        }
    }
    Ok(out)
}
