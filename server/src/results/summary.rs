//! Where each project stands at a glance: its builders counted by the colour of their newest
//! build, for the front page and the API's project list.

use std::collections::HashMap;

use diesel::QueryResult;

use super::verdict::{is_stale, of};
use crate::db::{DbConn, builders as builders_db};

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
            Some(b) => of(b, l.failing_kind()).0,
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
            "disputed" => "disputed",
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
