//! `/projects/{p}/console`: revisions down, builders across. For every red cell it says
//! whether that revision broke the builder (new regression) or it was failing already.

use std::collections::{BTreeSet, HashMap};

use actix_web::{HttpResponse, web};
use serde::Serialize;
use tera::Context;

use super::status;
use super::waterfall::{Query, headers, project_json};
use crate::AppState;
use crate::api::views::time;
use crate::db::builds::Listed;
use crate::error::{AppError, PageError};
use crate::results::verdict;

/// Builds read to fill the console; revisions shown at most.
const WINDOW: i64 = 800;
const REVISIONS: usize = 40;

#[derive(Serialize)]
struct Cell {
    id: i64,
    class: &'static str,
    glyph: &'static str,
    word: &'static str,
    why: Option<&'static str>,
    failed_tests: i64,
}

#[derive(Serialize)]
struct RevisionRow {
    revision: String,
    short: String,
    url: Option<String>,
    branch: String,
    time: String,
    label: String,
    cells: Vec<Option<Cell>>,
    /// Builders answering a request for it disagree: it is not green, whatever cells say.
    disputed: bool,
}

fn is_red(b: &crate::db::models::Build) -> bool {
    verdict::colour(b) == Some(false)
}

fn is_green(b: &crate::db::models::Build) -> bool {
    verdict::colour(b) == Some(true)
}

/// `GET /projects/{p}/console`.
pub async fn page(
    state: web::Data<AppState>,
    path: web::Path<String>,
    query: web::Query<Query>,
) -> Result<HttpResponse, PageError> {
    let name = path.into_inner();
    let q = query.into_inner();
    let pool = state.pool.clone();
    let q2 = q.clone();
    let (project, cols, latest, builds) = web::block(move || -> Result<_, PageError> {
        super::waterfall::load(&mut *pool.get()?, &name, &q2, None, WINDOW)
    })
    .await??;

    // Each builder's builds, newest first: a build's predecessor is the next one (same branch).
    let mut by_builder: HashMap<i64, Vec<&Listed>> = HashMap::new();
    for l in &builds {
        by_builder.entry(l.build.builder_id).or_default().push(l);
    }
    let previous = |l: &Listed| -> Option<&Listed> {
        let list = by_builder.get(&l.build.builder_id)?;
        let i = list.iter().position(|x| x.build.id == l.build.id)?;
        // The same rule as the build page: cancelled, skipped and lost builds are passed over.
        list[i + 1..]
            .iter()
            .find(|x| x.build.branch == l.build.branch && (is_green(&x.build) || is_red(&x.build)))
            .copied()
    };
    // Nothing before it in the window: its first build, unless the window was cut.
    let whole = (builds.len() as i64) < WINDOW;

    let mut order: Vec<&str> = Vec::new();
    for l in &builds {
        if !order.contains(&l.build.revision.as_str()) {
            if order.len() == REVISIONS {
                break;
            }
            order.push(&l.build.revision);
        }
    }
    let mut revisions: Vec<RevisionRow> = order
        .iter()
        .map(|rev| {
            let of_rev: Vec<&Listed> = builds.iter().filter(|l| l.build.revision == *rev).collect();
            let first = of_rev.iter().map(|l| l.build.started_at).min().unwrap_or_default();
            let cells = cols
                .iter()
                .map(|col| {
                    // The newest build of this builder for this revision.
                    let l = of_rev.iter().find(|l| l.build.builder_id == col.id)?;
                    let failing = l.steps.iter().find(|s| s.result == "failure").and_then(|s| s.kind.as_deref());
                    let (class, glyph, word) = verdict::of(&l.build, failing);
                    // Red here and green on another builder at this revision: a platform
                    // failure, the kind a build farm exists to catch (DESIGN's flaky rule).
                    let only_here = of_rev.iter().any(|o| o.build.builder_id != col.id && is_green(&o.build));
                    let why = (is_red(&l.build) && class != "disputed").then(|| match previous(l) {
                        Some(p) if is_green(&p.build) && only_here => "new regression, fails only here",
                        Some(p) if is_green(&p.build) => "new regression",
                        Some(p) if is_red(&p.build) => "already failing",
                        None if whole => "first build",
                        _ if only_here => "fails only here",
                        _ => "failing",
                    });
                    Some(Cell { id: l.build.id, class, glyph, word, why, failed_tests: l.tests.failed + l.tests.error })
                })
                .collect();
            let sample = &of_rev[0].build;
            RevisionRow {
                revision: rev.to_string(),
                short: rev.chars().take(10).collect(),
                url: super::revision_link(project.revision_url.as_deref(), rev),
                branch: sample.branch.clone(),
                time: time(first),
                label: first.format("%Y-%m-%d %H:%M").to_string(),
                cells,
                // Until agreement settles it: then the agreeing builds stand, and the dissenting
                // answer keeps its own mark.
                disputed: of_rev.iter().any(|l| l.build.agreement.as_deref() == Some("disputed"))
                    && !of_rev.iter().any(|l| l.build.agreement.as_deref() == Some("agreed")),
            }
        })
        .collect();

    // A new regression whose every failure is a flaky test is not one (DESIGN's flaky rule).
    let candidates: Vec<crate::db::models::Build> = revisions
        .iter()
        .flat_map(|r| r.cells.iter().flatten())
        .filter(|c| c.why.is_some_and(|w| w.starts_with("new regression")) && c.class == "tests-failed")
        .filter_map(|c| builds.iter().find(|l| l.build.id == c.id).map(|l| l.build.clone()))
        .collect();
    if !candidates.is_empty() {
        let pool = state.pool.clone();
        let flaky_only = web::block(move || -> Result<Vec<i64>, AppError> {
            let mut conn = pool.get()?;
            let mut out = Vec::new();
            for b in candidates {
                let failed = crate::db::builds::failed_tests(&mut conn, b.id, Some(50))?;
                if !failed.is_empty() && failed.iter().all(|(_, _, flaky)| *flaky) {
                    out.push(b.id);
                }
            }
            Ok(out)
        })
        .await??;
        for c in revisions.iter_mut().flat_map(|r| r.cells.iter_mut().flatten()) {
            if flaky_only.contains(&c.id) {
                c.why = Some("flaky tests");
            }
        }
    }

    let branches: BTreeSet<String> = builds.iter().map(|l| l.build.branch.clone()).collect();
    let mut ctx = Context::new();
    ctx.insert("project", &project_json(&project));
    ctx.insert("headers", &headers(&cols, &latest, &state));
    ctx.insert("revisions", &revisions);
    ctx.insert("branches", &branches);
    ctx.insert("q", &q);
    ctx.insert("lost_after", &status::age(state.lost_after));
    ctx.insert("filters", &Query { before: None, limit: None, compact: None, ..q.clone() }.with_before(None));
    super::html(&super::templates::render("console.html", &ctx).map_err(AppError::from)?)
}
