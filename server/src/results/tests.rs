//! What a test result means on its builder, decided once, when its report is stored (in the
//! report's own transaction), and kept in the result's row: since which build of its builder and
//! branch a failing test has been failing, and whether it is flaky there.
//!
//! **Flaky** is a property of one builder (DESIGN, "Results a project can trust from
//! strangers"): the same builder both passed and failed the test on the same revision, or the
//! test flipped between passing and failing at least [`FLAKY_FLIPS`] times in that builder's
//! last [`FLAKY_WINDOW`] builds of the branch that ran it. A test failing on one builder and
//! passing on another at the same revision is not flaky: it fails only there, and counts as a
//! regression there.
//!
//! Every row carries the test's recent outcomes on its builder and branch ([`History`]), taken
//! from the builder's previous build and moved on by one: judging a report reads that one
//! build's rows and the (few) builds of the same revision, never a window of history, so a
//! report costs the same with a million builds stored. Judged as of the report's arrival: a
//! later build does not change what an earlier result meant, and the tests page reads rows.

use std::collections::{HashMap, HashSet};

use diesel::prelude::*;

use crate::db::DbConn;
use crate::db::schema::{builds, test_results};

/// Outcomes a history keeps: this build's and its predecessors'.
pub const FLAKY_WINDOW: u32 = 20;
/// Flips within the window that make a test flaky.
pub const FLAKY_FLIPS: u32 = 3;
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

/// A test's last outcomes on one builder and branch, newest in the lowest bit (1 = failed),
/// under a marker bit that says how many there are: `0b1` is none yet, `0b1_0_1` passed then
/// failed. Skipped runs are not outcomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct History(pub i64);

impl History {
    /// No outcome yet.
    pub const EMPTY: History = History(1);

    /// How many outcomes it holds.
    pub fn len(self) -> u32 {
        63 - self.0.max(1).leading_zeros()
    }

    /// Whether it holds none.
    pub fn is_empty(self) -> bool {
        self.len() == 0
    }

    /// With one more outcome, the oldest dropped past [`FLAKY_WINDOW`].
    pub fn push(self, failed: bool) -> History {
        let len = (self.len() + 1).min(FLAKY_WINDOW);
        let bits = ((self.0 << 1) | i64::from(failed)) & ((1 << len) - 1);
        History((1 << len) | bits)
    }

    /// Changes between passing and failing, one outcome to the next.
    pub fn flips(self) -> u32 {
        let len = self.len();
        if len < 2 {
            return 0;
        }
        let bits = self.0 & ((1 << len) - 1);
        (((bits ^ (bits >> 1)) & ((1 << (len - 1)) - 1)) as u64).count_ones()
    }
}

/// What one result means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meaning {
    /// For a failure: the first build of this builder and branch in its current run of failures.
    pub since_build_id: Option<i64>,
    /// For a failure: flaky on this builder.
    pub flaky: bool,
    /// The test's outcomes on this builder and branch, this one included.
    pub history: History,
}

/// Whether a result is a failure.
pub fn failed(result: &str) -> bool {
    result == "failed" || result == "error"
}

/// The meaning of each of the report's results `(suite, name, result)`, in their order: three
/// queries and one more per `CHUNK` failing names, whatever the history stored.
pub fn judge(conn: &mut DbConn, b: &Context<'_>, tests: &[(&str, &str, &str)]) -> QueryResult<Vec<Meaning>> {
    /// Suite, name, result, failing since, history.
    type PreviousRow = (String, String, String, Option<i64>, Option<i64>);
    if tests.is_empty() {
        return Ok(Vec::new());
    }
    // The builder's previous build on this branch that ran tests: its rows carry the history.
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
    // (suite, name) → (failed, since, history) in that build.
    let mut before: HashMap<(String, String), (bool, Option<i64>, History)> = HashMap::new();
    if let Some(prev) = previous {
        let rows: Vec<PreviousRow> = test_results::table
            .filter(test_results::build_id.eq(prev))
            .select((
                test_results::suite,
                test_results::name,
                test_results::result,
                test_results::since_build_id,
                test_results::history,
            ))
            .load(conn)?;
        for (suite, name, result, since, history) in rows {
            let failed = failed(&result);
            // Rows stored before histories were kept know only their own outcome.
            let history = history.map_or_else(|| History::EMPTY.push(failed), History);
            before.insert((suite, name), (failed, since.or(Some(prev)).filter(|_| failed), history));
        }
    }

    // The same builder passing a test at this revision, in another build, makes its failure here
    // flaky. Found through the revision (few builds have one), not the builder's history.
    let failing_names: Vec<&str> = {
        let mut n: Vec<&str> = tests.iter().filter(|(_, _, r)| failed(r)).map(|(_, n, _)| *n).collect();
        n.sort_unstable();
        n.dedup();
        n
    };
    let mut passed_here: HashSet<(String, String)> = HashSet::new();
    if !failing_names.is_empty() {
        let same_revision: Vec<i64> = builds::table
            .filter(builds::project_id.eq(b.project_id))
            .filter(builds::revision.eq(b.revision))
            .select((builds::id, builds::builder_id))
            .load::<(i64, i64)>(conn)?
            .into_iter()
            .filter(|(id, builder)| *builder == b.builder_id && *id != b.build_id)
            .map(|(id, _)| id)
            .collect();
        if !same_revision.is_empty() {
            for chunk in failing_names.chunks(CHUNK) {
                let rows: Vec<(String, String)> = test_results::table
                    .filter(test_results::build_id.eq_any(&same_revision))
                    .filter(test_results::name.eq_any(chunk))
                    .filter(test_results::result.eq("passed"))
                    .select((test_results::suite, test_results::name))
                    .load(conn)?;
                passed_here.extend(rows);
            }
        }
    }

    let out = tests
        .iter()
        .map(|(suite, name, result)| {
            let key = ((*suite).to_owned(), (*name).to_owned());
            let earlier = before.get(&key);
            let history = earlier.map_or(History::EMPTY, |(_, _, h)| *h);
            if *result == "skipped" {
                return Meaning { since_build_id: None, flaky: false, history };
            }
            let failed = failed(result);
            let history = history.push(failed);
            if !failed {
                return Meaning { since_build_id: None, flaky: false, history };
            }
            let since = earlier.and_then(|(was_failing, since, _)| since.filter(|_| *was_failing));
            Meaning {
                since_build_id: Some(since.unwrap_or(b.build_id)),
                flaky: history.flips() >= FLAKY_FLIPS || passed_here.contains(&key),
                history,
            }
        })
        .collect();
    Ok(out)
}

/// For the failing tests `names` of a build: the other builders that passed each of them at
/// the same revision, by (suite, name). A test failing here and passing there is not flaky: it
/// "fails only on" this builder (a platform failure), which is what a build farm is for.
/// Read when a page is shown, so that a builder reporting later counts too; bounded by the
/// names asked for and by the (few) builds of one revision.
pub fn passing_elsewhere(
    conn: &mut DbConn,
    project_id: i64,
    revision: &str,
    builder_id: i64,
    names: &[(String, String)],
) -> QueryResult<HashMap<(String, String), Vec<String>>> {
    use crate::db::schema::builders;
    let mut out: HashMap<(String, String), Vec<String>> = HashMap::new();
    if names.is_empty() {
        return Ok(out);
    }
    let others: HashMap<i64, String> = builds::table
        .inner_join(builders::table)
        .filter(builds::project_id.eq(project_id))
        .filter(builds::revision.eq(revision))
        .filter(builds::builder_id.ne(builder_id))
        // A disputed answer is no one's evidence: a liar's "passed" must not make an honest
        // builder's failure look like its platform's.
        .filter(builds::agreement.is_null().or(builds::agreement.ne("disputed")))
        .select((builds::id, builders::name))
        .load::<(i64, String)>(conn)?
        .into_iter()
        .collect();
    if others.is_empty() {
        return Ok(out);
    }
    let ids: Vec<i64> = others.keys().copied().collect();
    let wanted: HashSet<&(String, String)> = names.iter().collect();
    let mut just_names: Vec<&str> = names.iter().map(|(_, n)| n.as_str()).collect();
    just_names.sort_unstable();
    just_names.dedup();
    for chunk in just_names.chunks(CHUNK) {
        let rows: Vec<(i64, String, String)> = test_results::table
            .filter(test_results::build_id.eq_any(&ids))
            .filter(test_results::name.eq_any(chunk))
            .filter(test_results::result.eq("passed"))
            .select((test_results::build_id, test_results::suite, test_results::name))
            .load(conn)?;
        for (build, suite, name) in rows {
            let key = (suite, name);
            if wanted.contains(&key)
                && let Some(who) = others.get(&build)
            {
                let list = out.entry(key).or_default();
                if !list.contains(who) {
                    list.push(who.clone());
                }
            }
        }
    }
    for list in out.values_mut() {
        list.sort();
    }
    Ok(out)
}

#[cfg(test)]
mod unit {
    use super::*;

    fn of(outcomes: &[bool]) -> History {
        outcomes.iter().fold(History::EMPTY, |h, f| h.push(*f))
    }

    #[test]
    fn a_history_keeps_the_last_twenty_outcomes_and_counts_flips() {
        assert_eq!(History::EMPTY.len(), 0);
        assert_eq!(of(&[false, true]).0, 0b1_01);
        assert_eq!(of(&[true, true, true]).flips(), 0);
        assert_eq!(of(&[false, true, false, true]).flips(), 3);
        // Thirty outcomes, alternating then steady: only the last twenty count.
        let mut runs: Vec<bool> = (0..10).map(|i| i % 2 == 0).collect();
        runs.extend([true; 20]);
        let h = of(&runs);
        assert_eq!((h.len(), h.flips()), (20, 0));
        runs.extend([false, true, false]);
        assert_eq!(of(&runs).flips(), 3);
        // What the database keeps fits an i64 and reads back the same.
        assert!(of(&runs).0 < 1 << 21);
    }
}
