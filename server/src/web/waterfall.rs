//! `/projects/{p}`: the waterfall. Time flows down (newest at the top), one column per
//! builder, each build a cell spanning its start to its end.

use std::collections::{BTreeSet, HashMap};

use actix_web::{HttpResponse, web};
use chrono::NaiveDateTime;
use serde::{Deserialize, Serialize};
use tera::Context;

use super::status;
use crate::AppState;
use crate::api::views::time;
use crate::db::builds::{self, Cursor, Filter, Listed};
use crate::db::models::{Builder, Project};
use crate::db::{DbConn, builders, projects, status as latest};
use crate::error::{AppError, PageError};
use crate::results::verdict;

/// Builds on one page by default, and at most.
const PAGE: i64 = 150;
const MAX_PAGE: i64 = 500;
/// A quiet stretch longer than this, with nothing running across it, is collapsed to one row.
const IDLE: chrono::TimeDelta = chrono::TimeDelta::hours(2);

/// Query of the waterfall (and console) pages: filters and the time range, all linkable.
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
pub struct Query {
    /// Only this branch.
    pub branch: Option<String>,
    /// Only these builders, comma-separated.
    pub builders: Option<String>,
    /// Only builders with this property, `key:value` (e.g. `os:linux`, matched as a substring).
    pub property: Option<String>,
    /// Builds started before this point: a cursor from an "older" link, or an RFC 3339 time.
    pub before: Option<String>,
    /// Builds per page.
    pub limit: Option<i64>,
    /// Smaller cells, no step lists: for very many builders.
    pub compact: Option<u8>,
}

impl Query {
    fn cursor(&self) -> Result<Option<Cursor>, AppError> {
        let Some(b) = self.before.as_deref().filter(|b| !b.is_empty()) else { return Ok(None) };
        if let Some(c) = Cursor::decode(b) {
            return Ok(Some(c));
        }
        let t = chrono::DateTime::parse_from_rfc3339(b).map_err(|_| {
            AppError::bad_request("bad_query", "before: give an RFC 3339 time or an \"older\" link's value")
        })?;
        Ok(Some(Cursor { started_at: crate::db::to_db_time(t), id: i64::MAX }))
    }

    /// The query string for these filters with another `before`.
    pub fn with_before(&self, before: Option<String>) -> String {
        let mut q = self.clone();
        q.before = before;
        serde_urlencoded_like(&q)
    }
}

/// A tiny encoder: the filters are few and known, so no extra dependency is needed.
fn serde_urlencoded_like(q: &Query) -> String {
    let mut parts = Vec::new();
    let mut add = |k: &str, v: &Option<String>| {
        if let Some(v) = v.as_deref().filter(|v| !v.is_empty()) {
            parts.push(format!("{k}={}", urlencode(v)));
        }
    };
    add("branch", &q.branch);
    add("builders", &q.builders);
    add("property", &q.property);
    add("before", &q.before);
    add("limit", &q.limit.map(|l| l.to_string()));
    add("compact", &q.compact.map(|c| c.to_string()));
    if parts.is_empty() { String::new() } else { format!("?{}", parts.join("&")) }
}

/// What a query value keeps as it is: RFC 3986's unreserved characters.
const UNRESERVED: &percent_encoding::AsciiSet =
    &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

/// Percent-encodes everything but unreserved characters: names hold spaces, `&`, `#` and worse.
pub fn urlencode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, UNRESERVED).to_string()
}

/// The builders a page shows as columns, after the builder and property filters.
pub fn columns(all: Vec<Builder>, q: &Query) -> Vec<Builder> {
    let wanted: Option<BTreeSet<&str>> =
        q.builders.as_deref().filter(|s| !s.is_empty()).map(|s| s.split(',').map(str::trim).collect());
    let property = q.property.as_deref().and_then(|p| p.split_once(':'));
    all.into_iter()
        .filter(|b| wanted.as_ref().is_none_or(|w| w.contains(b.name.as_str())))
        .filter(|b| {
            property.is_none_or(|(k, v)| {
                serde_json::from_str::<HashMap<String, String>>(&b.properties)
                    .ok()
                    .and_then(|p| p.get(k).cloned())
                    .is_some_and(|have| have.to_lowercase().contains(&v.to_lowercase()))
            })
        })
        .collect()
}

/// A column header: who the builder is and how it is doing.
#[derive(Serialize)]
pub struct Header {
    pub name: String,
    pub status: String,
    pub stale: bool,
    pub seen: String,
    pub seen_at: Option<String>,
    pub os: Option<String>,
    pub arch: Option<String>,
    /// What the volunteer declared its machine offers (from its reports' properties).
    pub capabilities: Vec<String>,
    pub class: &'static str,
    pub glyph: &'static str,
    pub word: &'static str,
    pub latest_id: Option<i64>,
}

/// Headers for the columns, from each builder's newest build.
pub fn headers(cols: &[Builder], latest: &[latest::Latest], state: &AppState) -> Vec<Header> {
    let now = crate::db::now();
    cols.iter()
        .map(|b| {
            let l = latest.iter().find(|l| l.builder_id == b.id);
            let build = l.and_then(|l| l.build.as_ref());
            let (class, glyph, word) = match build {
                Some(x) => verdict::of(x, l.and_then(|l| l.failing_kind())),
                None => ("nodata", "?", "no builds"),
            };
            let props: HashMap<String, String> = serde_json::from_str(&b.properties).unwrap_or_default();
            Header {
                name: b.name.clone(),
                status: b.status.clone(),
                stale: b.last_report_at.is_none_or(|t| now - t > state.stale_after),
                seen: b.last_report_at.map(|t| status::age(now - t)).unwrap_or_else(|| "never".into()),
                seen_at: b.last_report_at.map(time),
                os: props.get("os").cloned(),
                arch: props.get("arch").cloned(),
                capabilities: props
                    .get("capabilities")
                    .map(|c| c.split_whitespace().map(str::to_owned).collect())
                    .unwrap_or_default(),
                class,
                glyph,
                word,
                latest_id: build.map(|x| x.id),
            }
        })
        .collect()
}

#[derive(Serialize)]
struct Cell {
    id: i64,
    rowspan: usize,
    class: &'static str,
    glyph: &'static str,
    word: &'static str,
    revision: String,
    revision_short: String,
    revision_url: Option<String>,
    changes_url: Option<String>,
    since: Option<String>,
    duration: String,
    steps: Vec<StepCell>,
    /// The volunteer ran it without a sandbox (`sandbox = "none"`).
    unsandboxed: bool,
    /// The signed recipe version it ran, if any.
    recipe_version: Option<i64>,
    /// Its branch, when the page shows builds of several.
    branch: Option<String>,
    /// Tests that failed (or errored), when there are any.
    failed_tests: i64,
}

#[derive(Serialize)]
struct StepCell {
    position: usize,
    name: String,
    result: String,
    failed: bool,
}

#[derive(Serialize)]
enum Slot {
    Start(Box<Cell>),
    Covered,
    Empty,
}

#[derive(Serialize)]
struct Row {
    time: String,
    label: String,
    day: Option<String>,
    revisions: Vec<(String, Option<String>)>,
    slots: Vec<Slot>,
    idle_after: Option<String>,
}

/// `GET /projects/{p}`.
pub async fn page(
    req: actix_web::HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
    query: web::Query<Query>,
) -> Result<HttpResponse, PageError> {
    let name = path.into_inner();
    let q = query.into_inner();
    let after = q.cursor()?;
    let limit = q.limit.unwrap_or(PAGE).clamp(1, MAX_PAGE);
    let pool = state.pool.clone();
    let q2 = q.clone();
    let (project, cols, latest, rows, (recipe, failing_notifications)) = web::block(move || -> Result<_, PageError> {
        let mut conn = pool.get()?;
        let (project, cols, latest, rows) = load(&mut conn, &name, &q2, after, limit + 1)?;
        let recipe = crate::db::recipes::current(&mut conn, project.id)?;
        // Subscriptions every attempt to reach has failed for a day: somebody expects news
        // and gets none, which the maintainers reading this page should know.
        let failing: Vec<String> =
            crate::db::notify::failing(&mut conn, project.id, crate::db::now() - crate::notify::send::RETRY_FOR)?
                .iter()
                .map(crate::notify::public_target)
                .collect();
        Ok((project, cols, latest, rows, (recipe, failing)))
    })
    .await??;

    let more = rows.len() as i64 > limit;
    let rows: Vec<Listed> = rows.into_iter().take(limit as usize).collect();
    let older =
        more.then(|| rows.last().map(|l| Cursor { started_at: l.build.started_at, id: l.build.id }.encode())).flatten();
    let headers = headers(&cols, &latest, &state);
    let branches: BTreeSet<String> = latest
        .iter()
        .filter_map(|l| l.build.as_ref().map(|b| b.branch.clone()))
        .chain(rows.iter().map(|l| l.build.branch.clone()))
        .collect();
    let table = layout(&project, &cols, rows);

    let mut ctx = Context::new();
    ctx.insert("project", &project_json(&project));
    ctx.insert("headers", &headers);
    ctx.insert("rows", &table);
    ctx.insert("q", &q);
    ctx.insert("compact", &(q.compact == Some(1)));
    ctx.insert("branches", &branches);
    ctx.insert("older", &older.map(|c| q.with_before(Some(c))));
    ctx.insert("newest", &q.before.as_ref().map(|_| q.with_before(None)));
    ctx.insert("compact_toggle", &{
        let mut t = q.clone();
        t.compact = if q.compact == Some(1) { None } else { Some(1) };
        t.with_before(q.before.clone())
    });
    ctx.insert("stale_after", &status::age(state.stale_after));
    ctx.insert("lost_after", &status::age(state.lost_after));
    ctx.insert("recipe", &recipe.as_ref().and_then(recipe_json));
    ctx.insert("failing_notifications", &failing_notifications);
    ctx.insert("base", &crate::api::base_url(&req));
    ctx.insert("filters", &Query { before: None, limit: None, compact: None, ..q.clone() }.with_before(None));
    super::html(&super::templates::render("waterfall.html", &ctx).map_err(AppError::from)?)
}

/// A project, its columns (after the filters), each builder's newest build, and up to
/// `limit` builds newest first (before `after`): what the waterfall and the console draw.
pub type Loaded = (Project, Vec<Builder>, Vec<latest::Latest>, Vec<Listed>);

/// Loads what the waterfall and the console draw, in a fixed number of indexed queries.
pub fn load(conn: &mut DbConn, name: &str, q: &Query, after: Option<Cursor>, limit: i64) -> Result<Loaded, PageError> {
    let project =
        projects::by_name(conn, name)?.ok_or_else(|| AppError::not_found(format!("no project named {name:?}")))?;
    let cols = columns(builders::for_project(conn, project.id)?, q);
    let latest = latest::latest(conn, Some(project.id))?;
    let filter = Filter {
        branch: q.branch.clone().filter(|b| !b.is_empty()),
        // Restrict by builder only when filtering: the plain project index is the fastest path.
        builders: (q.builders.is_some() || q.property.is_some()).then(|| cols.iter().map(|b| b.id).collect()),
        ..Filter::default()
    };
    let rows = builds::newest(conn, project.id, &filter, after, limit)?;
    Ok((project, cols, latest, rows))
}

/// The current recipe as the project page shows it (the stored bytes were checked when published).
fn recipe_json(row: &crate::db::models::RecipeRow) -> Option<serde_json::Value> {
    let r = tbox_protocol::parse_recipe(&row.body).ok()?;
    let steps: Vec<serde_json::Value> = r
        .steps
        .iter()
        .map(|s| serde_json::json!({"name": s.name, "run": s.run, "timeout": s.timeout, "kind": s.kind.map(|k| k.as_str())}))
        .collect();
    Some(serde_json::json!({
        "version": r.version, "key": row.key_fingerprint, "repo": r.repo, "branches": r.branches,
        "requires": r.requires, "network": r.network, "steps": steps,
        "expires": r.expires.to_rfc3339(), "expires_label": r.expires.format("%Y-%m-%d %H:%M UTC").to_string(),
        "expired": r.expires <= chrono::Utc::now(),
    }))
}

/// What every page of a project shows about it.
pub fn project_json(p: &Project) -> serde_json::Value {
    serde_json::json!({"name": p.name, "title": p.title, "repo_url": p.repo_url})
}

/// Places each build in its column, spanning the rows from its end (top) to its start.
fn layout(project: &Project, cols: &[Builder], builds: Vec<Listed>) -> Vec<Row> {
    let now = crate::db::now();
    let several_branches = builds.iter().any(|l| l.build.branch != builds[0].build.branch);
    // A lost build has no end: it takes one row, so it hides none of the builds after it.
    let end_of = |l: &Listed| {
        let end = if l.build.is_lost() { l.build.started_at } else { l.build.finished_at.unwrap_or(now) };
        end.max(l.build.started_at)
    };
    let times: Vec<NaiveDateTime> = {
        let set: BTreeSet<NaiveDateTime> = builds.iter().flat_map(|l| [l.build.started_at, end_of(l)]).collect();
        set.into_iter().rev().collect()
    };
    let row_of = |t: NaiveDateTime| times.iter().position(|x| *x == t).unwrap_or(0);
    let col_of: HashMap<i64, usize> = cols.iter().enumerate().map(|(i, b)| (b.id, i)).collect();

    // Per column, newest first; each build's previous one (for "changes since") is the next.
    let mut per_col: Vec<Vec<Listed>> = (0..cols.len()).map(|_| Vec::new()).collect();
    for l in builds {
        if let Some(&c) = col_of.get(&l.build.builder_id) {
            per_col[c].push(l);
        }
    }
    let mut slots: Vec<Vec<Slot>> = (0..times.len()).map(|_| (0..cols.len()).map(|_| Slot::Empty).collect()).collect();
    let mut spans: Vec<(usize, usize)> = Vec::new();
    let mut starts: Vec<Vec<(String, Option<String>)>> = vec![Vec::new(); times.len()];
    for (c, col) in per_col.iter().enumerate() {
        let mut free_from = 0; // first row not yet taken in this column
        for (k, l) in col.iter().enumerate() {
            let b = &l.build;
            let bottom = row_of(b.started_at);
            let top = row_of(end_of(l)).max(free_from);
            if top >= times.len() || top > bottom && bottom < free_from {
                continue; // overlaps a newer build of the same builder entirely; rare
            }
            let bottom = bottom.max(top);
            let failing_kind = l.steps.iter().find(|s| s.result == "failure").and_then(|s| s.kind.as_deref());
            let (class, glyph, word) = verdict::of(b, failing_kind);
            // "Since" and the compare link are within the build's branch: a release build is not
            // compared with one of main.
            let previous = col[k + 1..]
                .iter()
                .find(|p| p.build.branch == b.branch)
                .map(|p| p.build.revision.clone())
                .filter(|p| *p != b.revision);
            let revision_url = super::revision_link(project.revision_url.as_deref(), &b.revision);
            let changes_url = previous.as_ref().and_then(|p| {
                project.compare_url.as_deref().map(|t| t.replace("{from}", p).replace("{to}", &b.revision))
            });
            let cell = Cell {
                id: b.id,
                rowspan: bottom - top + 1,
                class,
                glyph,
                word,
                revision_short: short(&b.revision),
                revision: b.revision.clone(),
                revision_url: revision_url.clone(),
                changes_url,
                since: previous.as_deref().map(short),
                duration: if b.is_lost() {
                    String::new()
                } else {
                    status::duration((end_of(l) - b.started_at).num_seconds())
                },
                unsandboxed: b.sandbox.as_deref() == Some("none"),
                branch: several_branches.then(|| b.branch.clone()),
                failed_tests: l.tests.failed + l.tests.error,
                recipe_version: b.recipe_version,
                steps: l
                    .steps
                    .iter()
                    .enumerate()
                    .map(|(i, s)| StepCell {
                        position: i,
                        name: s.name.clone(),
                        result: s.result.clone(),
                        failed: !matches!(s.result.as_str(), "success" | "skipped"),
                    })
                    .collect(),
            };
            slots[top][c] = Slot::Start(Box::new(cell));
            for row in slots.iter_mut().take(bottom + 1).skip(top + 1) {
                row[c] = Slot::Covered;
            }
            spans.push((top, bottom));
            if !starts[bottom].iter().any(|(r, _)| *r == b.revision) {
                starts[bottom].push((b.revision.clone(), revision_url));
            }
            free_from = bottom + 1;
        }
    }

    let mut last_day = None;
    times
        .iter()
        .enumerate()
        .zip(slots)
        .map(|((i, t), slots)| {
            let day = t.format("%a %Y-%m-%d").to_string();
            let new_day = last_day.as_ref() != Some(&day);
            last_day = Some(day.clone());
            let idle_after = times.get(i + 1).and_then(|next| {
                let gap = *t - *next;
                let spanned = spans.iter().any(|&(top, bottom)| top <= i && bottom > i);
                (gap > IDLE && !spanned).then(|| status::age(gap))
            });
            Row {
                time: time(*t),
                label: t.format("%H:%M").to_string(),
                day: new_day.then_some(day),
                revisions: starts[i].iter().map(|(r, u)| (short(r), u.clone())).collect(),
                slots,
                idle_after,
            }
        })
        .collect()
}

fn short(rev: &str) -> String {
    rev.chars().take(10).collect()
}
