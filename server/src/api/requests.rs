//! Build requests: a project asks for builds (`POST`, signed by a project key), anyone reads
//! them with their attempts (`GET`).

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use chrono::{DateTime, Utc};
use serde::Serialize;
use tbox_protocol::{BranchName, Distinct, MAX_REQUEST_AGE_DAYS, RequestError, Revision, parse_request, report_id};

use super::status::project;
use super::views::time;
use crate::AppState;
use crate::db::models::{BuildRequest, NewBuildRequest};
use crate::db::{self, DbConn, recipes, requests};
use crate::error::AppError;
use crate::project_keys;
use crate::results::agreement::{self, Answer};
use std::collections::HashMap;

/// What is asked, whoever asks: a project's signed request (`POST .../requests`) or an admin
/// (`tbox-server request add`). Branch and revision are checked by construction.
#[derive(Debug)]
pub struct Ask {
    pub branch: BranchName,
    pub revision: Option<Revision>,
    pub builders: u32,
    pub requires: Vec<String>,
    pub deadline: Option<DateTime<Utc>>,
    /// Agreement asked for: this many answers from distinct owners (or builders).
    pub quorum: Option<u32>,
    pub distinct: Distinct,
}

/// The furthest deadline: volunteers refuse a request older than this anyway.
const MAX_DEADLINE_DAYS: i64 = MAX_REQUEST_AGE_DAYS;

/// Checks what the types do not (422 naming the field).
pub fn check(conn: &mut DbConn, project_id: i64, ask: &Ask, now: DateTime<Utc>) -> Result<(), AppError> {
    let bad = |m: String| Err(AppError::invalid("invalid", m));
    // Volunteers build a request only from a recipe the project signed, and refuse an expired
    // one: such a request would only collect refusals.
    match recipes::current(conn, project_id)? {
        None => {
            return Err(AppError::invalid(
                "no_recipe",
                "the project has no recipe: volunteers build requests only from a recipe the project signed \
                 (publish one first: tbox-report recipe publish)",
            ));
        }
        Some(r) if r.expires_at <= db::to_db_time(now) => {
            return Err(AppError::invalid(
                "recipe_expired",
                format!(
                    "the project's recipe (version {}) expired at {} UTC and volunteers refuse it: publish a new \
                     version first",
                    r.version,
                    r.expires_at.format("%Y-%m-%d %H:%M")
                ),
            ));
        }
        Some(_) => {}
    }
    if !(1..=tbox_protocol::MAX_REQUEST_BUILDERS).contains(&ask.builders) {
        return bad(format!("builders: must be 1 to {}", tbox_protocol::MAX_REQUEST_BUILDERS));
    }
    if let Some(q) = ask.quorum
        && !(2..=ask.builders).contains(&q)
    {
        return bad(format!(
            "quorum: must be 2 to builders ({}): {q} agreeing answers cannot come from {} builders",
            ask.builders, ask.builders
        ));
    }
    let known: Vec<String> = recipes::capabilities(conn, project_id)?.into_iter().map(|c| c.name).collect();
    for (i, r) in ask.requires.iter().enumerate() {
        if !known.contains(r) {
            return bad(format!("requires[{i}]: capability {r:?} is not registered for this project"));
        }
    }
    if let Some(d) = ask.deadline {
        if d <= now {
            return bad("deadline: already past".into());
        }
        if d > now + chrono::TimeDelta::days(MAX_DEADLINE_DAYS) {
            return bad(format!("deadline: at most {MAX_DEADLINE_DAYS} days ahead"));
        }
    }
    Ok(())
}

/// Checks a request (422 naming the field) and records it; a signed body recorded before
/// (`digest`) is the same request, `(it, false)`.
pub fn record(
    conn: &mut DbConn,
    project_id: i64,
    ask: &Ask,
    signed: Option<(&str, &str)>,
    requested_by: &str,
    now: DateTime<Utc>,
) -> Result<(BuildRequest, bool), AppError> {
    let digest = signed.map(|(body, _)| report_id(body.as_bytes()));
    check(conn, project_id, ask, now)?;
    let requires = serde_json::to_string(&ask.requires).map_err(|e| anyhow::anyhow!(e))?;
    let new = NewBuildRequest {
        project_id,
        branch: ask.branch.as_str(),
        revision: ask.revision.as_ref().map(Revision::as_str),
        builders: i32::try_from(ask.builders).unwrap_or(i32::MAX),
        requires: &requires,
        deadline: ask.deadline.map(db::to_db_time),
        state: "open",
        digest: digest.as_deref(),
        body: signed.map(|(body, _)| body),
        signature: signed.map(|(_, sig)| sig),
        requested_by,
        created_at: db::to_db_time(now),
        quorum: ask.quorum.map(|q| i32::try_from(q).unwrap_or(i32::MAX)),
        distinct_by: ask.distinct.as_str(),
        verdict: ask.quorum.map(|_| "pending"),
    };
    Ok(requests::add(conn, &new)?)
}

#[derive(Debug, Serialize)]
struct Created {
    id: i64,
    state: String,
    url: String,
}

/// `POST /api/v1/projects/{p}/requests`.
pub async fn create(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, AppError> {
    super::require_content_type(req.headers(), "application/json")?;
    let signature = super::project_signature(req.headers())?;
    let body = crate::body::read(req.headers(), payload, state.body_limits(16 << 10)).await?;
    let name = path.into_inner();
    let pool = state.pool.clone();
    let (row, created) = web::block(move || -> Result<_, AppError> {
        let mut conn = pool.get()?;
        let p = project(&mut conn, &name)?;
        let signer = project_keys::check_signature(&mut conn, p.id, &name, &body, &signature)?;
        let now = Utc::now();
        let ask = signed_ask(&body, &name, now)?;
        // Kept as sent (it is UTF-8 JSON): builders check the signature themselves.
        let text = std::str::from_utf8(&body)
            .map_err(|_| AppError::bad_request("malformed", "the build request is not UTF-8"))?;
        record(&mut conn, p.id, &ask, Some((text, &signature)), &signer, now)
    })
    .await??;
    if created {
        state.work.bump();
    }
    let url = format!("{}/projects/{}/requests#request-{}", super::base_url(&req), path_project(&req), row.id);
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok(HttpResponse::build(status).json(Created { id: row.id, state: row.state, url }))
}

/// A signed request's bytes, held to what volunteers will hold them to: its `project` and
/// `created_at` present and right, fresh, not past its deadline (400 not JSON, 422 naming the
/// field).
fn signed_ask(body: &[u8], project: &str, now: DateTime<Utc>) -> Result<Ask, AppError> {
    serde_json::from_slice::<serde_json::Value>(body)
        .map_err(|e| AppError::bad_request("malformed", format!("not a build request: {e}")))?;
    let invalid = |m: String| AppError::invalid("invalid", m);
    let r = parse_request(body).map_err(|e| match e {
        RequestError::Malformed(m) => invalid(m),
        RequestError::Invalid(e) => invalid(e.to_string()),
        other => invalid(other.to_string()),
    })?;
    r.check(project, now).map_err(|e| match e {
        RequestError::WrongProject { .. } => invalid(format!("project: {e}")),
        RequestError::TooOld(_) | RequestError::FromTheFuture(_) => invalid(format!("created_at: {e}")),
        RequestError::PastDeadline(_) => invalid(format!("deadline: {e}")),
        other => invalid(other.to_string()),
    })?;
    Ok(Ask {
        branch: r.branch,
        revision: r.revision,
        builders: r.builders,
        requires: r.requires,
        deadline: r.deadline,
        quorum: r.quorum,
        distinct: r.distinct,
    })
}

fn path_project(req: &HttpRequest) -> String {
    req.match_info().get("project").unwrap_or_default().to_owned()
}

/// A request as the API and the page show it.
#[derive(Debug, Serialize)]
pub struct RequestView {
    pub id: i64,
    pub state: String,
    pub reason: Option<String>,
    pub branch: String,
    pub revision: Option<String>,
    pub builders: i32,
    pub requires: Vec<String>,
    pub deadline: Option<String>,
    pub requested_by: String,
    pub created_at: String,
    pub closed_at: Option<String>,
    pub leased: usize,
    pub done: usize,
    pub lost: usize,
    /// Attempts their builder declined (the slot stayed open).
    pub declined: usize,
    pub attempts: Vec<AttemptView>,
    /// Agreement asked for: how many answers from distinct `distinct`s must agree.
    pub quorum: Option<i32>,
    pub distinct: String,
    /// Slots in all: `builders` and those disputes (or a spot check) opened.
    pub slots: i32,
    /// Given a second slot by the server's spot check (judged as quorum 2).
    pub spot_check: bool,
    /// `pending`, `agreed`, `disputed` or `inconclusive`; none without agreement asked.
    pub verdict: Option<String>,
    /// The builds that agree, once agreed.
    pub agreeing: Vec<i64>,
    /// Every finished build answering it: who said what, and whether it agrees.
    pub answers: Vec<Answer>,
}

/// One attempt: a builder's lease and what became of it.
#[derive(Debug, Serialize)]
pub struct AttemptView {
    pub lease: i64,
    pub builder: String,
    pub state: String,
    pub granted_at: String,
    pub expires_at: String,
    pub ended_at: Option<String>,
    pub build: Option<i64>,
    pub build_url: Option<String>,
    /// Why its builder declined it (state `declined`).
    pub reason: Option<String>,
    /// Its build's result, once finished (`success`, `failure`, …): an answered slot may be red.
    pub result: Option<String>,
}

/// A project's newest requests with their attempts (a few queries).
pub fn views(conn: &mut DbConn, project_id: i64, base: &str, limit: i64) -> Result<Vec<RequestView>, AppError> {
    let rows: Vec<BuildRequest> = requests::list(conn, project_id, limit)?;
    views_of(conn, rows, base)
}

fn views_of(conn: &mut DbConn, rows: Vec<BuildRequest>, base: &str) -> Result<Vec<RequestView>, AppError> {
    let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
    let attempts = requests::attempts(conn, &ids)?;
    let build_ids: Vec<i64> = attempts.iter().filter_map(|(l, _)| l.build_id).collect();
    let results = crate::db::builds::results(conn, &build_ids)?;
    let mut answers: HashMap<i64, Vec<Answer>> = HashMap::new();
    for (request, a) in agreement::answers(conn, &ids)? {
        answers.entry(request).or_default().push(a);
    }
    Ok(rows
        .into_iter()
        .map(|r| {
            let mine: Vec<AttemptView> = attempts
                .iter()
                .filter(|(l, _)| l.request_id == r.id)
                .map(|(l, builder)| AttemptView {
                    lease: l.id,
                    builder: builder.clone(),
                    state: l.state.clone(),
                    granted_at: time(l.granted_at),
                    expires_at: time(l.expires_at),
                    ended_at: l.ended_at.map(time),
                    build: l.build_id,
                    build_url: l.build_id.map(|b| format!("{base}/builds/{b}")),
                    reason: l.reason.clone(),
                    result: l.build_id.and_then(|b| results.get(&b).cloned().flatten()),
                })
                .collect();
            let n = |s: &str| mine.iter().filter(|a| a.state == s).count();
            let answers = answers.remove(&r.id).unwrap_or_default();
            let judged = agreement::quorum_of(&r).is_some();
            RequestView {
                agreeing: answers.iter().filter(|a| a.agrees == Some(true)).map(|a| a.build).collect(),
                answers: if judged { answers } else { Vec::new() },
                quorum: r.quorum,
                distinct: r.distinct_by,
                slots: r.builders + r.extra_slots,
                spot_check: r.spot_check,
                verdict: r.verdict,
                id: r.id,
                leased: n("leased"),
                done: n("done"),
                lost: n("lost"),
                declined: n("declined"),
                state: r.state,
                reason: r.reason,
                branch: r.branch,
                revision: r.revision,
                builders: r.builders,
                requires: serde_json::from_str(&r.requires).unwrap_or_default(),
                deadline: r.deadline.map(time),
                requested_by: r.requested_by,
                created_at: time(r.created_at),
                closed_at: r.closed_at.map(time),
                attempts: mine,
            }
        })
        .collect())
}

/// `GET /api/v1/projects/{p}/requests`: the newest 100, with their attempts.
pub async fn list(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, AppError> {
    let name = path.into_inner();
    let pool = state.pool.clone();
    let base = super::base_url(&req);
    let name2 = name.clone();
    let requests = web::block(move || -> Result<_, AppError> {
        let mut conn = pool.get()?;
        let p = project(&mut conn, &name2)?;
        views(&mut conn, p.id, &base, 100)
    })
    .await??;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "project": name, "requests": requests })))
}

/// `GET /api/v1/projects/{p}/requests/{id}`: one request, with its attempts, verdict and
/// answers.
pub async fn one(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, AppError> {
    let (name, id) = path.into_inner();
    let id: i64 = id
        .parse()
        .ok()
        .filter(|i| *i > 0)
        .ok_or_else(|| AppError::bad_request("bad_id", format!("request id: {id:?} is not a request number")))?;
    let pool = state.pool.clone();
    let base = super::base_url(&req);
    let view = web::block(move || -> Result<_, AppError> {
        let mut conn = pool.get()?;
        let p = project(&mut conn, &name)?;
        let row = requests::by_id(&mut conn, id)?
            .filter(|r| r.project_id == p.id)
            .ok_or_else(|| AppError::not_found(format!("project {name:?} has no request {id}")))?;
        Ok(views_of(&mut conn, vec![row], &base)?.pop())
    })
    .await??;
    Ok(HttpResponse::Ok().json(view))
}
