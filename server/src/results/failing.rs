//! What fails now, and what one test did: the tests failing in the newest build of each
//! builder and branch (since when, flaky there, or failing only there), and one test's results
//! across builders. The API's `tests/failing` and `tests/history` and the tests pages read
//! these, so they say the same.

use std::collections::HashMap;

use chrono::NaiveDateTime;
use diesel::prelude::*;

use crate::api::views::time;
use crate::db::models::Build;
use crate::db::schema::{builders, builds as builds_t, test_results};
use crate::db::status::{Head, heads};
use crate::db::{DbConn, builders as builders_db};
use crate::error::AppError;

/// Failing tests whose "since" is worked out at most (each costs two indexed queries).
const MAX_FAILING: usize = 200;

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
    // Which of them pass on another builder at the same revision: "fails only on B", a
    // platform failure (DESIGN's flaky rule), one bounded query per head with failures.
    let mut elsewhere: HashMap<i64, HashMap<(String, String), Vec<String>>> = HashMap::new();
    for h in &hs {
        let names: Vec<(String, String)> =
            failing.iter().filter(|r| r.0 == h.build.id).map(|r| (r.1.clone(), r.2.clone())).collect();
        if !names.is_empty() {
            let found = super::tests::passing_elsewhere(conn, project_id, &h.build.revision, h.builder.id, &names)?;
            elsewhere.insert(h.build.id, found);
        }
    }
    let mut out = Vec::new();
    for (build_id, suite, test, result, message, since_id, flaky) in failing {
        let Some(h) = by_build.get(&build_id) else { continue };
        let passes_on = elsewhere.get(&build_id).and_then(|e| e.get(&(suite.clone(), test.clone()))).cloned();
        // Stored before this was decided at ingest: since this build, as far as is known.
        let since = since_id.and_then(|id| since_builds.get(&id)).unwrap_or(&h.build);
        out.push(serde_json::json!({
            "suite": suite, "name": test, "result": result, "message": message,
            "builder": h.builder.name, "branch": h.build.branch, "build": build_id,
            "revision": h.build.revision, "url": format!("{base}/builds/{build_id}"), "flaky": flaky,
            "passes_on": passes_on.unwrap_or_default(),
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
    Ok(format!("W/\"f{}\"", tbox_protocol::hex(&h.finalize()[..12])))
}

/// How many of a project's newest builds a test history looks through.
pub const HISTORY_WINDOW: i64 = 10_000;

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
