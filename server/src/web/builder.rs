//! `/projects/{p}/builders/{b}`: one volunteer machine: who, what, how reliable.

use std::collections::BTreeMap;

use actix_web::{HttpResponse, web};
use serde::Serialize;
use tera::Context;

use super::status;
use super::waterfall::project_json;
use crate::AppState;
use crate::api::views::time;
use crate::db::{builders, builds, projects};
use crate::error::{AppError, PageError};
use crate::results::verdict;

/// Builds in the history (and in the success rate).
const HISTORY: i64 = 100;

#[derive(Serialize)]
struct HistoryRow {
    id: i64,
    time: String,
    label: String,
    revision: String,
    short: String,
    branch: String,
    class: &'static str,
    glyph: &'static str,
    word: &'static str,
    duration: String,
}

#[derive(Serialize)]
struct PropertyChange {
    id: i64,
    label: String,
    changes: Vec<(String, String, String)>,
}

/// `GET /projects/{p}/builders/{b}`.
pub async fn page(state: web::Data<AppState>, path: web::Path<(String, String)>) -> Result<HttpResponse, PageError> {
    let (project_name, builder_name) = path.into_inner();
    let pool = state.pool.clone();
    let (project, listed, history, kinds) = web::block(move || -> Result<_, PageError> {
        let mut conn = pool.get()?;
        let project = projects::by_name(&mut conn, &project_name)?
            .ok_or_else(|| AppError::not_found(format!("no project named {project_name:?}")))?;
        // Pending and revoked builders are not shown to the public (anyone can register one).
        let listed = builders::listed(&mut conn, &builder_name)?
            .filter(|l| l.builder.status == builders::ACTIVE)
            .ok_or_else(|| AppError::not_found(format!("no builder named {builder_name:?}")))?;
        let history = builds::of_builder(&mut conn, listed.builder.id, project.id, HISTORY)?;
        let kinds = builds::failing_kinds(&mut conn, &history.iter().map(|b| b.id).collect::<Vec<_>>())?;
        Ok((project, listed, history, kinds))
    })
    .await??;

    let now = crate::db::now();
    let b = &listed.builder;
    let finished: Vec<_> = history.iter().filter(|x| x.state == "finished").collect();
    // One rule with every page: a disputed answer is not green.
    let green = finished.iter().filter(|x| verdict::colour(x) == Some(true)).count();
    let durations: Vec<i64> =
        finished.iter().filter_map(|x| x.finished_at.map(|f| (f - x.started_at).num_seconds())).collect();
    let rows: Vec<HistoryRow> = history
        .iter()
        .map(|x| {
            let (class, glyph, word) = verdict::of(x, kinds.get(&x.id).map(String::as_str));
            HistoryRow {
                id: x.id,
                time: time(x.started_at),
                label: x.started_at.format("%Y-%m-%d %H:%M").to_string(),
                short: x.revision.chars().take(10).collect(),
                revision: x.revision.clone(),
                branch: x.branch.clone(),
                class,
                glyph,
                word,
                duration: x.finished_at.map(|f| status::duration((f - x.started_at).num_seconds())).unwrap_or_default(),
            }
        })
        .collect();
    // Property history: where a build's properties differ from the build before it.
    let mut changes = Vec::new();
    for pair in history.windows(2) {
        let (newer, older) = (&pair[0], &pair[1]);
        let a: BTreeMap<String, String> = serde_json::from_str(&older.properties).unwrap_or_default();
        let n: BTreeMap<String, String> = serde_json::from_str(&newer.properties).unwrap_or_default();
        let keys: std::collections::BTreeSet<&String> = a.keys().chain(n.keys()).collect();
        let diff: Vec<(String, String, String)> = keys
            .into_iter()
            .filter(|k| k.as_str() != "reporter" || a.get(*k) != n.get(*k))
            .filter(|k| a.get(*k) != n.get(*k))
            .map(|k| (k.clone(), a.get(k).cloned().unwrap_or_default(), n.get(k).cloned().unwrap_or_default()))
            .collect();
        if !diff.is_empty() {
            changes.push(PropertyChange {
                id: newer.id,
                label: newer.started_at.format("%Y-%m-%d %H:%M").to_string(),
                changes: diff,
            });
        }
    }
    let properties: BTreeMap<String, String> = serde_json::from_str(&b.properties).unwrap_or_default();
    let mut ctx = Context::new();
    ctx.insert("project", &project_json(&project));
    ctx.insert(
        "b",
        &serde_json::json!({
            "name": b.name, "status": b.status, "owner": b.owner, "description": b.description,
            "agreed": b.agreed, "disputed": b.disputed,
            "registered": time(b.created_at), "registered_label": b.created_at.format("%Y-%m-%d").to_string(),
            "seen_at": b.last_report_at.map(time),
            "seen": b.last_report_at.map(|t| status::age(now - t)),
            "stale": b.last_report_at.is_none_or(|t| now - t > state.stale_after),
            "projects": listed.projects,
        }),
    );
    ctx.insert(
        "keys",
        &listed
            .keys
            .iter()
            .map(|k| {
                serde_json::json!({"fingerprint": k.fingerprint, "added": k.created_at.format("%Y-%m-%d").to_string(),
                                        "revoked": k.revoked_at.map(|r| r.format("%Y-%m-%d").to_string())})
            })
            .collect::<Vec<_>>(),
    );
    ctx.insert("properties", &properties);
    ctx.insert("changes", &changes);
    ctx.insert("history", &rows);
    ctx.insert(
        "rate",
        &serde_json::json!({
            "finished": finished.len(), "green": green,
            // Rounded, not truncated: 4 of 6 is 67%.
            "percent": (!finished.is_empty()).then(|| ((green * 100) as f64 / finished.len() as f64).round() as u64),
            "mean": (!durations.is_empty()).then(|| status::duration(durations.iter().sum::<i64>() / durations.len() as i64)),
        }),
    );
    ctx.insert("stale_after", &status::age(state.stale_after));
    super::html(&super::templates::render("builder.html", &ctx).map_err(AppError::from)?)
}
