//! `/builds/{id}`: one build, its steps, the end of each failed step's log, its tests.

use actix_web::{HttpResponse, web};
use serde::Serialize;
use tera::Context;

use super::status;
use crate::AppState;
use crate::api::views::time;
use crate::db::builds;
use crate::error::{AppError, PageError};
use crate::logscan;
use crate::results::verdict;

/// Error lines listed as jump links above a brief.
const JUMPS: usize = 20;

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
struct BriefView {
    position: i32,
    name: String,
    result: String,
    brief: logscan::Brief,
    jumps: Vec<(u64, String)>,
}

/// `GET /builds/{id}`.
pub async fn page(state: web::Data<AppState>, path: web::Path<i64>) -> Result<HttpResponse, PageError> {
    let id = path.into_inner();
    let pool = state.pool.clone();
    let (full, briefs, (prev, next), since, before, first, elsewhere) = web::block(move || -> Result<_, PageError> {
        let mut conn = pool.get()?;
        let full = builds::get(&mut conn, id)?.ok_or_else(|| AppError::not_found(format!("no build {id}")))?;
        let mut briefs = Vec::new();
        for s in
            full.steps.iter().filter(|s| s.log_digest.is_some() && !matches!(s.result.as_str(), "success" | "skipped"))
        {
            if let Some(brief) = crate::results::errors::brief(&mut conn, id, s.position)? {
                let jumps = brief
                    .blocks
                    .iter()
                    .flat_map(|b| b.lines.iter())
                    .filter(|l| l.kind != logscan::Kind::Context)
                    .take(JUMPS)
                    .map(|l| (l.number, l.text.chars().take(140).collect()))
                    .collect();
                briefs.push(BriefView {
                    position: s.position,
                    name: s.name.clone(),
                    result: s.result.clone(),
                    brief,
                    jumps,
                });
            }
        }
        // Which failing tests pass on other builders at this revision ("fails only on B").
        let failing: Vec<(String, String)> = full
            .tests
            .iter()
            .filter(|t| crate::results::tests::failed(&t.result))
            .take(500)
            .map(|t| (t.suite.clone(), t.name.clone()))
            .collect();
        let elsewhere = crate::results::tests::passing_elsewhere(
            &mut conn,
            full.build.project_id,
            &full.build.revision,
            full.build.builder_id,
            &failing,
        )?;
        let first = crate::results::errors::first_error(&mut conn, id, &full.steps)?;
        let neighbours = builds::neighbours(&mut conn, &full.build)?;
        let red = verdict::colour(&full.build) == Some(false);
        // One rule with the console and the feed: what the last green-or-red build before it was.
        let before = if red { builds::previous_decided(&mut conn, &full.build)? } else { None };
        let already = before.as_ref().is_some_and(|p| verdict::colour(p) == Some(false));
        let since = if already { builds::failing_since(&mut conn, &full.build)? } else { None };
        let agreement = crate::results::agreement::of_build(&mut conn, id)?;
        Ok((full, briefs, neighbours, since, before, first, (elsewhere, agreement)))
    })
    .await??;
    let (elsewhere, agreement) = elsewhere;

    let b = &full.build;
    let red = verdict::colour(b) == Some(false);
    // Red with nothing green or red before it on this branch: its first build, not a breakage.
    let first_build = red && before.is_none();
    // Red after a green one: this build broke the builder.
    let broke = before.as_ref().filter(|p| verdict::colour(p) == Some(true)).map(|p| p.id);
    let failing_kind = full.steps.iter().find(|s| s.result == "failure").and_then(|s| s.kind.as_deref());
    let (class, glyph, word) = verdict::of(b, failing_kind);
    let properties: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&b.properties).unwrap_or_default();
    let summary = serde_json::json!({
        "id": b.id, "project": full.project, "project_title": full.project_title, "builder": full.builder,
        "branch": b.branch, "revision": b.revision,
        "revision_url": super::revision_link(full.revision_url.as_deref(), &b.revision),
        "started_at": time(b.started_at), "finished_at": b.finished_at.map(time),
        "duration": b.finished_at.map(|f| status::duration((f - b.started_at).num_seconds())),
        "reporter": b.reporter, "properties": properties,
        "recipe_version": b.recipe_version, "recipe_key": b.recipe_key, "sandbox": b.sandbox, "class": class, "glyph": glyph, "word": word,
    });
    let steps: Vec<StepRow> = full
        .steps
        .iter()
        .map(|s| StepRow {
            position: s.position,
            name: s.name.clone(),
            kind: s.kind.clone(),
            result: s.result.clone(),
            glyph: verdict::glyph(&s.result),
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
    // A refusal (a recipe or request refused, no sandbox, a lease declined) or a failed
    // checkout: one step that ran nothing. Its page must not say whose steps "ran".
    let nothing_ran = b.result.as_deref() == Some("exception")
        && full.steps.iter().all(|s| s.result == "exception" && s.exit_code.is_none());
    let mut ctx = Context::new();
    ctx.insert("agreement", &agreement.map(|(r, answers)| agreement_view(b.id, &r, &answers)));
    let artifacts: Vec<tbox_protocol::Artifact> =
        b.artifacts.as_deref().and_then(|a| serde_json::from_str(a).ok()).unwrap_or_default();
    ctx.insert("artifacts", &artifacts);
    ctx.insert("nothing_ran", &nothing_ran);
    ctx.insert("b", &summary);
    ctx.insert("steps", &steps);
    ctx.insert("briefs", &briefs);
    ctx.insert("prev", &prev);
    ctx.insert("next", &next);
    ctx.insert(
        "since",
        &since.filter(|f| f.id != b.id).map(|f| {
            serde_json::json!({"id": f.id, "revision": f.revision.chars().take(10).collect::<String>(),
                               "time": time(f.started_at), "label": f.started_at.format("%Y-%m-%d %H:%M").to_string()})
        }),
    );
    ctx.insert("first_build", &first_build);
    ctx.insert("first_error", &first);
    ctx.insert("broke_after", &broke);
    ctx.insert(
        "tests",
        &tests
            .iter()
            .map(|t| {
                let passes_on = elsewhere.get(&(t.suite.clone(), t.name.clone()));
                serde_json::json!({"suite": t.suite, "name": t.name, "result": t.result,
                                        "duration_ms": t.duration_ms, "message": t.message,
                                        "passes_on": passes_on,
                                        "history": super::tests::history_url(&full.project, &t.suite, &t.name)})
            })
            .collect::<Vec<_>>(),
    );
    ctx.insert(
        "test_counts",
        &serde_json::json!({"passed": count("passed"), "failed": count("failed"), "error": count("error"), "skipped": count("skipped")}),
    );
    super::html(&super::templates::render("build.html", &ctx).map_err(AppError::from)?)
}

/// What the build page says of the request this build answered: the verdict, and each answer
/// with how it differs from the agreed one (or, while disputed, from this build).
fn agreement_view(
    build_id: i64,
    r: &crate::db::models::BuildRequest,
    answers: &[crate::results::agreement::Answer],
) -> serde_json::Value {
    let reference =
        answers.iter().find(|a| a.agrees == Some(true)).or_else(|| answers.iter().find(|a| a.build == build_id));
    let rows: Vec<serde_json::Value> = answers
        .iter()
        .map(|a| {
            let differs = reference.filter(|r| r.build != a.build).map(|r| a.differences(r)).unwrap_or_default();
            serde_json::json!({
                "build": a.build, "builder": a.builder, "owner": a.owner, "result": a.result,
                "failing": a.failing_tests.len(), "agrees": a.agrees, "this": a.build == build_id,
                "differs": differs.join("; "),
            })
        })
        .collect();
    serde_json::json!({
        "request": r.id, "verdict": r.verdict, "quorum": crate::results::agreement::quorum_of(r),
        "distinct": r.distinct_by, "spot_check": r.spot_check,
        "against": reference.map(|a| a.builder.clone()), "answers": rows,
    })
}
