//! `/projects/{p}/tests`: the tests failing now, per builder and branch, since when, flaky ones
//! marked; `/projects/{p}/tests/history?suite=S&name=N`: one test across builders and revisions.

use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use tera::Context;

use super::waterfall::project_json;
use crate::AppState;
use crate::api::status::{project, test_name};
use crate::error::{AppError, PageError};
use crate::results::failing::{failing_tag, failing_tests, test_history};

/// `GET /projects/{p}/tests`. Its validator comes first: a client that has the page pays for
/// one small query (the project's heads), not for the page.
pub async fn page(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, PageError> {
    let name = path.into_inner();
    let pool = state.pool.clone();
    let base = crate::api::base_url(&req);
    let if_none_match = crate::api::if_none_match(&req);
    let found = web::block(move || -> Result<_, AppError> {
        let mut conn = pool.get()?;
        let p = project(&mut conn, &name)?;
        let tag = format!("{}{}", failing_tag(&mut conn, p.id, None, None)?, crate::api::tag_of(&[&p.name, &p.title]));
        if if_none_match.as_deref().is_some_and(|v| crate::api::tag_matches(v, &tag)) {
            return Ok(Err(tag));
        }
        let failing = failing_tests(&mut conn, p.id, None, None, &base)?;
        Ok(Ok((p, failing, tag)))
    })
    .await??;
    let (p, failing, tag) = match found {
        Ok(found) => found,
        Err(tag) => return Ok(crate::api::not_modified(&tag)),
    };
    let flaky = failing.iter().filter(|f| f["flaky"] == true).count();
    let mut failing = failing;
    for f in &mut failing {
        let url = history_url(&p.name, f["suite"].as_str().unwrap_or(""), f["name"].as_str().unwrap_or(""));
        f["history"] = url.into();
    }
    let mut ctx = Context::new();
    ctx.insert("project", &project_json(&p));
    ctx.insert("failing", &failing);
    ctx.insert("flaky", &flaky);
    let mut page = super::html(&super::templates::render("tests.html", &ctx).map_err(AppError::from)?)?;
    crate::api::set_tag(&mut page, &tag);
    Ok(page)
}

/// The query of the history page.
#[derive(Debug, Deserialize)]
pub struct HistoryQuery {
    pub name: Option<String>,
    pub suite: Option<String>,
}

/// `GET /projects/{p}/tests/history?suite=S&name=N`.
pub async fn history(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
    q: web::Query<HistoryQuery>,
) -> Result<HttpResponse, PageError> {
    let name = path.into_inner();
    let q = q.into_inner();
    let test = test_name(q.name.as_deref())?;
    let pool = state.pool.clone();
    let base = crate::api::base_url(&req);
    let (suite, test2) = (q.suite.clone(), test.clone());
    let (p, results) = web::block(move || -> Result<_, AppError> {
        let mut conn = pool.get()?;
        let p = project(&mut conn, &name)?;
        let results = test_history(&mut conn, p.id, &test2, suite.as_deref(), None, 500, &base)?;
        Ok((p, results))
    })
    .await??;
    let count = |r: &str| results.iter().filter(|x| x["result"] == r).count();
    let mut ctx = Context::new();
    ctx.insert("project", &project_json(&p));
    ctx.insert("name", &test);
    ctx.insert("suite", &q.suite);
    ctx.insert("results", &results);
    ctx.insert(
        "counts",
        &serde_json::json!({"passed": count("passed"), "failed": count("failed"), "error": count("error"), "skipped": count("skipped")}),
    );
    super::html(&super::templates::render("test_history.html", &ctx).map_err(AppError::from)?)
}

/// The history page of one test, its suite and name percent-encoded for the query.
pub fn history_url(project: &str, suite: &str, name: &str) -> String {
    let encode = super::waterfall::urlencode;
    format!(
        "{}/projects/{project}/tests/history?suite={}&name={}",
        super::templates::root(),
        encode(suite),
        encode(name)
    )
}
