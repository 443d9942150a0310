//! What a failing test means on its builder, decided once, when its report is stored (in the
//! report's own transaction), and kept in the result's row: since which build of its builder and
//! branch it has been failing, and whether it is flaky there.
//!
//! **Flaky** is a property of one builder (DESIGN, "Results a project can trust from
//! strangers"): the same builder both passed and failed the test on the same revision, or the
//! test flipped between passing and failing at least [`FLAKY_FLIPS`] times in that builder's
//! last [`FLAKY_WINDOW`] builds. A test failing on one builder and passing on another at the same
//! revision is not flaky: it fails only there, and counts as a regression there.
//!
//! Judged as of the report's arrival: a later build does not change what an earlier result
//! meant. The tests page then reads rows, never history, whatever anyone asks of it.

use std::collections::{HashMap, HashSet};

use diesel::prelude::*;

use crate::db::DbConn;
use crate::db::schema::{builds, test_results};

/// Builds of a builder a test's flips are counted over, this one included.
pub const FLAKY_WINDOW: i64 = 20;
/// Flips within the window that make a test flaky.
pub const FLAKY_FLIPS: usize = 3;
/// Failing tests of one report judged at most (sorted by suite and name); the rest count as
/// failing since this build and not flaky. A report failing more tests than this is broken
/// wholesale, not flaky.
pub const MAX_JUDGED: usize = 500;
/// Names per query (SQLite's bound-variable limit is far above).
const CHUNK: usize = 500;

/// The build a report made, as far as judging its tests goes.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    pub build_id: i64,
    pub project_id: i64,
    pub builder_id: i64,
    pub branch: &'a str,
    pub revision: &'a str,
    pub started_at: chrono::NaiveDateTime,
}

/// What one failure means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meaning {
    /// The first build of this builder and branch in the current run of failures of the test.
    pub since_build_id: i64,
    /// Flaky on this builder.
    pub flaky: bool,
}

/// Whether a result is a failure.
pub fn failed(result: &str) -> bool {
    result == "failed" || result == "error"
}

/// The meaning of each of the report's failing tests `(suite, name)`: a handful of queries
/// whatever their number (none when nothing failed).
pub fn judge(
    conn: &mut DbConn,
    b: &Context<'_>,
    failing: &[(&str, &str)],
) -> QueryResult<HashMap<(String, String), Meaning>> {
    let mut out = HashMap::new();
    if failing.is_empty() {
        return Ok(out);
    }
    let mut judged: Vec<(&str, &str)> = failing.to_vec();
    judged.sort_unstable();
    judged.dedup();
    judged.truncate(MAX_JUDGED);
    let names: Vec<&str> = {
        let mut n: Vec<&str> = judged.iter().map(|(_, n)| *n).collect();
        n.sort_unstable();
        n.dedup();
        n
    };
    let wanted: HashSet<(&str, &str)> = judged.iter().copied().collect();

    // Since: carried on from the builder's previous build on this branch that ran tests.
    let previous: Option<i64> = builds::table
        .filter(builds::project_id.eq(b.project_id))
        .filter(builds::builder_id.eq(b.builder_id))
        .filter(builds::branch.eq(b.branch))
        .filter(builds::state.eq("finished"))
        .filter(builds::id.ne(b.build_id))
        .filter(builds::started_at.le(b.started_at))
        .filter(diesel::dsl::exists(test_results::table.filter(test_results::build_id.eq(builds::id))))
        .order((builds::started_at.desc(), builds::id.desc()))
        .select(builds::id)
        .first(conn)
        .optional()?;
    let mut since: HashMap<(String, String), i64> = HashMap::new();
    if let Some(prev) = previous {
        for chunk in names.chunks(CHUNK) {
            let rows: Vec<(String, String, String, Option<i64>)> = test_results::table
                .filter(test_results::build_id.eq(prev))
                .filter(test_results::name.eq_any(chunk))
                .filter(test_results::result.eq_any(["failed", "error"]))
                .select((test_results::suite, test_results::name, test_results::result, test_results::since_build_id))
                .load(conn)?;
            for (suite, name, _, s) in rows {
                since.insert((suite, name), s.unwrap_or(prev));
            }
        }
    }

    // The builder's last builds (this one's predecessors), newest first: the same revision's
    // passes and the flips are read from them.
    let recent: Vec<(i64, String)> = builds::table
        .filter(builds::project_id.eq(b.project_id))
        .filter(builds::builder_id.eq(b.builder_id))
        .filter(builds::id.ne(b.build_id))
        .filter(builds::started_at.le(b.started_at))
        .order((builds::started_at.desc(), builds::id.desc()))
        .limit(FLAKY_WINDOW - 1)
        .select((builds::id, builds::revision))
        .load(conn)?;
    let same_revision: Vec<i64> = builds::table
        .filter(builds::project_id.eq(b.project_id))
        .filter(builds::builder_id.eq(b.builder_id))
        .filter(builds::revision.eq(b.revision))
        .filter(builds::id.ne(b.build_id))
        .select(builds::id)
        .load(conn)?;
    let mut ids: Vec<i64> = recent.iter().map(|(id, _)| *id).chain(same_revision.iter().copied()).collect();
    ids.sort_unstable();
    ids.dedup();
    // (suite, name) → build → passed?
    let mut seen: HashMap<(String, String), HashMap<i64, bool>> = HashMap::new();
    if !ids.is_empty() {
        for chunk in names.chunks(CHUNK) {
            let rows: Vec<(i64, String, String, String)> = test_results::table
                .filter(test_results::build_id.eq_any(&ids))
                .filter(test_results::name.eq_any(chunk))
                .filter(test_results::result.ne("skipped"))
                .select((test_results::build_id, test_results::suite, test_results::name, test_results::result))
                .load(conn)?;
            for (build, suite, name, result) in rows {
                if wanted.contains(&(suite.as_str(), name.as_str())) {
                    seen.entry((suite, name)).or_default().insert(build, result == "passed");
                }
            }
        }
    }

    for (suite, name) in failing {
        let key = ((*suite).to_owned(), (*name).to_owned());
        if out.contains_key(&key) {
            continue;
        }
        let runs = seen.get(&key);
        let flaky = wanted.contains(&(*suite, *name)) && {
            let passed_same_revision = runs.is_some_and(|r| same_revision.iter().any(|id| r.get(id) == Some(&true)));
            // This build (a failure), then its predecessors newest first, as they ran.
            let outcomes: Vec<bool> = std::iter::once(false)
                .chain(recent.iter().filter_map(|(id, _)| runs.and_then(|r| r.get(id)).copied()))
                .collect();
            let flips = outcomes.windows(2).filter(|w| w[0] != w[1]).count();
            passed_same_revision || flips >= FLAKY_FLIPS
        };
        let since_build_id = since.get(&key).copied().unwrap_or(b.build_id);
        out.insert(key, Meaning { since_build_id, flaky });
    }
    Ok(out)
}
