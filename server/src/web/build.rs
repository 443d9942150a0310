//! `/builds/{id}`: one build, its steps, the end of each failed step's log, its tests.

use actix_web::{HttpResponse, web};
use serde::Serialize;
use tera::Context;

use super::status;
use crate::AppState;
use crate::api::views::time;
use crate::db::builds;
use crate::error::{AppError, PageError};

/// Lines of a failed step's log shown on the page; the raw log has the rest.
const TAIL_LINES: usize = 200;

#[derive(Serialize)]
struct StepRow {
    position: i32,
    name: String,
    kind: Option<String>,
    result: String,
    glyph: &'static str,
    duration: String,
    exit_code: Option<i32>,
    has_log: bool,
    log_truncated: bool,
}

#[derive(Serialize)]
struct Tail {
    position: i32,
    name: String,
    result: String,
    text: String,
    shown: usize,
    skipped: usize,
}

/// `GET /builds/{id}`.
pub async fn page(
    state: web::Data<AppState>,
    path: web::Path<i64>,
) -> Result<HttpResponse, PageError> {
    let id = path.into_inner();
    let pool = state.pool.clone();
    let (full, tails) = web::block(move || -> Result<_, PageError> {
        let mut conn = pool.get()?;
        let full = builds::get(&mut conn, id)?
            .ok_or_else(|| AppError::not_found(format!("no build {id}")))?;
        let mut tails = Vec::new();
        for s in full.steps.iter().filter(|s| {
            s.log_digest.is_some() && !matches!(s.result.as_str(), "success" | "skipped")
        }) {
            if let Some(text) = super::logs::load(&mut conn, id, s.position)? {
                tails.push(tail(s.position, &s.name, &s.result, &text));
            }
        }
        Ok((full, tails))
    })
    .await??;

    let b = &full.build;
    let failing_kind = full
        .steps
        .iter()
        .find(|s| s.result == "failure")
        .and_then(|s| s.kind.as_deref());
    let (class, glyph, word) = status::of_build(&b.state, b.result.as_deref(), failing_kind);
    let properties: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&b.properties).unwrap_or_default();
    let summary = serde_json::json!({
        "id": b.id, "project": full.project, "project_title": full.project_title, "builder": full.builder,
        "branch": b.branch, "revision": b.revision,
        "revision_url": super::revision_link(full.revision_url.as_deref(), &b.revision),
        "started_at": time(b.started_at), "finished_at": b.finished_at.map(time),
        "duration": b.finished_at.map(|f| status::duration((f - b.started_at).num_seconds())),
        "reporter": b.reporter, "properties": properties, "class": class, "glyph": glyph, "word": word,
    });
    let steps: Vec<StepRow> = full
        .steps
        .iter()
        .map(|s| StepRow {
            position: s.position,
            name: s.name.clone(),
            kind: s.kind.clone(),
            result: s.result.clone(),
            glyph: status::glyph(&s.result),
            duration: status::duration((s.finished_at - s.started_at).num_seconds()),
            exit_code: s.exit_code,
            has_log: s.log_digest.is_some(),
            log_truncated: s.log_truncated,
        })
        .collect();
    // Failures first: they are what the reader came for.
    let mut tests: Vec<_> = full.tests.iter().collect();
    tests.sort_by_key(|t| match t.result.as_str() {
        "failed" | "error" => 0,
        "skipped" => 2,
        _ => 1,
    });
    let count = |r: &str| full.tests.iter().filter(|t| t.result == r).count();
    let mut ctx = Context::new();
    ctx.insert("b", &summary);
    ctx.insert("steps", &steps);
    ctx.insert("tails", &tails);
    ctx.insert(
        "tests",
        &tests
            .iter()
            .map(|t| {
                serde_json::json!({"suite": t.suite, "name": t.name, "result": t.result,
                                        "duration_ms": t.duration_ms, "message": t.message})
            })
            .collect::<Vec<_>>(),
    );
    ctx.insert(
        "test_counts",
        &serde_json::json!({"passed": count("passed"), "failed": count("failed"), "error": count("error"), "skipped": count("skipped")}),
    );
    super::html(&super::templates::render("build.html", &ctx).map_err(AppError::from)?)
}

fn tail(position: i32, name: &str, result: &str, text: &[u8]) -> Tail {
    let text = String::from_utf8_lossy(text);
    let lines: Vec<&str> = text.lines().collect();
    let skipped = lines.len().saturating_sub(TAIL_LINES);
    Tail {
        position,
        name: name.to_owned(),
        result: result.to_owned(),
        shown: lines.len() - skipped,
        skipped,
        text: lines[skipped..].join("\n"),
    }
}
