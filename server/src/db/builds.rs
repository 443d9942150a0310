//! Builds, their steps, logs and test results.

use std::collections::HashMap;

use chrono::NaiveDateTime;
use diesel::prelude::*;

use super::DbConn;
use super::models::{Build, BuildFields, NewLog, NewStep, NewTest, Step, TestRow};
use super::schema::{builders, builds, logs, projects, reports, steps, test_results};
use crate::dispatch;

/// The build a report body (by digest) was recorded as.
pub fn by_report(conn: &mut DbConn, digest: &str) -> QueryResult<Option<i64>> {
    reports::table.find(digest).select(reports::build_id).first(conn).optional()
}

/// The build of a builder with this uuid.
pub fn by_uuid(conn: &mut DbConn, builder_id: i64, uuid: &str) -> QueryResult<Option<Build>> {
    builds::table
        .filter(builds::builder_id.eq(builder_id))
        .filter(builds::uuid.eq(uuid))
        .select(Build::as_select())
        .first(conn)
        .optional()
}

/// Inserts a new build and returns its id.
pub fn insert(conn: &mut DbConn, fields: &BuildFields<'_>) -> QueryResult<i64> {
    dispatch!(conn, |c| diesel::insert_into(builds::table).values(fields).returning(builds::id).get_result(c))
}

/// Overwrites a `started` build with its `finished` report, dropping what the started one had.
pub fn complete(conn: &mut DbConn, id: i64, fields: &BuildFields<'_>) -> QueryResult<()> {
    // Its head is set again by the caller, under the (possibly corrected) branch.
    diesel::delete(super::schema::heads::table.filter(super::schema::heads::build_id.eq(id))).execute(conn)?;
    diesel::delete(steps::table.filter(steps::build_id.eq(id))).execute(conn)?;
    diesel::delete(test_results::table.filter(test_results::build_id.eq(id))).execute(conn)?;
    diesel::update(builds::table.find(id)).set(fields).execute(conn)?;
    Ok(())
}

/// Results that say the source works (green): every page, feed and notification decides
/// "broke", "fixed" and "failing since" with these and [`RED`].
pub const GREEN: [&str; 2] = ["success", "warnings"];

/// Results that say the source does not work (red: failed, or tests failed). An `exception`
/// is neither: the reporter failed (a checkout, a sandbox), which says nothing about the
/// source, as a cancelled or lost build says nothing.
pub const RED: [&str; 1] = ["failure"];

/// Green or red.
pub const DECIDED: [&str; 3] = ["success", "warnings", "failure"];

/// Whether a result is green (`Some(true)`), red (`Some(false)`), or neither.
pub fn colour(result: Option<&str>) -> Option<bool> {
    let r = result?;
    if GREEN.contains(&r) {
        Some(true)
    } else if RED.contains(&r) {
        Some(false)
    } else {
        None
    }
}

/// The result of a `started` build that sent no `finished` report within `serve --lost-after`.
/// Its state stays `started`, so a late `finished` report still completes it (see
/// [`complete`]); the API shows it as `"state": "lost"` with no result.
pub const LOST: &str = "lost";

// What a stored build means, next to the query that marks builds lost.
impl Build {
    /// Started, and given up on: no `finished` report came in time.
    pub fn is_lost(&self) -> bool {
        self.state == "started" && self.result.as_deref() == Some(LOST)
    }

    /// Started and still expected to finish.
    pub fn is_running(&self) -> bool {
        self.state == "started" && !self.is_lost()
    }

    /// The state programs see: `started`, `finished` or `lost`.
    pub fn shown_state(&self) -> &str {
        if self.is_lost() { LOST } else { &self.state }
    }

    /// The result programs see: none until a `finished` report says it.
    pub fn shown_result(&self) -> Option<&str> {
        if self.state == "finished" { self.result.as_deref() } else { None }
    }
}

/// Marks builds started before `before` that are still running as lost; returns their ids.
///
/// Idempotent (several servers on one database may all run it), and it never touches a
/// finished build, so it cannot undo a `finished` report committed meanwhile. The conditions on
/// state and result are literals so that the `builds_started` partial index, which holds only
/// the running builds, is used whatever plan the database caches.
pub fn mark_lost(conn: &mut DbConn, before: NaiveDateTime) -> QueryResult<Vec<i64>> {
    crate::dispatch!(conn, |c| diesel::update(builds::table.filter(running()).filter(builds::started_at.lt(before)))
        .set(builds::result.eq(LOST))
        .returning(builds::id)
        .get_results(c))
}

/// Marks these builds lost if they are still running (their lease was lost); returns the ids
/// it marked. As [`mark_lost`], a late `finished` report still completes them.
pub fn mark_lost_ids(conn: &mut DbConn, ids: &[i64]) -> QueryResult<Vec<i64>> {
    crate::dispatch!(conn, |c| diesel::update(builds::table.filter(builds::id.eq_any(ids)).filter(running()))
        .set(builds::result.eq(LOST))
        .returning(builds::id)
        .get_results(c))
}

/// A build still running (not finished, not marked lost), written out so that the
/// `builds_started` partial index serves it whatever plan the database caches.
fn running() -> diesel::expression::SqlLiteral<diesel::sql_types::Bool> {
    diesel::dsl::sql::<diesel::sql_types::Bool>("state = 'started' AND result IS NULL")
}

/// Remembers a report body's digest, so that sending it again changes nothing.
pub fn record_report(conn: &mut DbConn, digest: &str, build_id: i64, at: NaiveDateTime) -> QueryResult<()> {
    diesel::insert_into(reports::table)
        .values((reports::digest.eq(digest), reports::build_id.eq(build_id), reports::received_at.eq(at)))
        .execute(conn)?;
    Ok(())
}

/// Stores logs; one already stored (same digest) is kept as it is.
///
/// Row by row: diesel cannot batch an upsert on SQLite, and a build has only a few logs.
pub fn insert_logs(conn: &mut DbConn, rows: &[NewLog<'_>]) -> QueryResult<()> {
    for row in rows {
        dispatch!(conn, |c| diesel::insert_into(logs::table).values(row).on_conflict_do_nothing().execute(c))?;
    }
    Ok(())
}

/// Stores a build's steps (one statement).
pub fn insert_steps(conn: &mut DbConn, rows: &[NewStep<'_>]) -> QueryResult<()> {
    if rows.is_empty() {
        return Ok(());
    }
    dispatch!(conn, |c| diesel::insert_into(steps::table).values(rows).execute(c))?;
    Ok(())
}

/// Stores a build's test results. On SQLite, one prepared statement run per row: in-process
/// that costs less than building and parsing a statement with a bound value per column and row
/// for every report (measured: the insert was 37% of the writer's time that way). On
/// PostgreSQL, multi-row statements, each a round trip.
pub fn insert_tests(conn: &mut DbConn, rows: &[NewTest<'_>]) -> QueryResult<()> {
    match conn {
        DbConn::Sqlite(c) => {
            use super::fixed::{Bind, Fixed, Sql};
            enum InsertTest {}
            const SQL: Sql<9> = Sql::new(
                "INSERT INTO test_results (build_id, suite, name, result, duration_ms, message, since_build_id, flaky, history) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            );
            for r in rows {
                let row = Fixed::<InsertTest, 9>::new(
                    &SQL,
                    [
                        Bind::Int(r.build_id),
                        Bind::Text(r.suite),
                        Bind::Text(r.name),
                        Bind::Text(r.result),
                        Bind::OptInt(r.duration_ms),
                        Bind::OptText(r.message),
                        Bind::OptInt(r.since_build_id),
                        Bind::Bool(r.flaky),
                        Bind::OptInt(r.history),
                    ],
                );
                row.execute(c)?;
            }
        }
        DbConn::Pg(c) => {
            for chunk in rows.chunks(2000) {
                diesel::insert_into(test_results::table).values(chunk).execute(c)?;
            }
        }
    }
    Ok(())
}

/// A position in the newest-first list of builds: the last build of the previous page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub started_at: NaiveDateTime,
    pub id: i64,
}

impl Cursor {
    /// An opaque, URL-safe token.
    pub fn encode(&self) -> String {
        format!("{}.{}", self.started_at.and_utc().timestamp_micros(), self.id)
    }

    /// Reads a token made by [`Cursor::encode`].
    pub fn decode(s: &str) -> Option<Cursor> {
        let (micros, id) = s.split_once('.')?;
        let started_at = chrono::DateTime::from_timestamp_micros(micros.parse().ok()?)?.naive_utc();
        // Only times a database can hold (PostgreSQL refuses years beyond 294276, SQLite sorts
        // text): anything else is not a cursor this server made.
        use chrono::Datelike as _;
        if !(1..=9999).contains(&started_at.year()) {
            return None;
        }
        Some(Cursor { started_at, id: id.parse().ok()? })
    }
}

/// A build with the names a listing shows.
#[derive(Debug, Clone)]
pub struct Listed {
    pub build: Build,
    pub builder: String,
    pub steps: Vec<StepSummary>,
    pub tests: TestCounts,
}

/// A build's test results by outcome.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct TestCounts {
    pub passed: i64,
    pub failed: i64,
    pub error: i64,
    pub skipped: i64,
}

/// The (suite, name) of a build's failed or errored tests, in the order they were reported;
/// at most `limit` of them, or all.
pub fn failed_tests(conn: &mut DbConn, build_id: i64, limit: Option<i64>) -> QueryResult<Vec<(String, String, bool)>> {
    use super::schema::test_results;
    let mut q = test_results::table
        .filter(test_results::build_id.eq(build_id))
        .filter(test_results::result.eq_any(["failed", "error"]))
        .order(test_results::id)
        .select((test_results::suite, test_results::name, test_results::flaky))
        .into_boxed();
    if let Some(n) = limit {
        q = q.limit(n);
    }
    q.load(conn)
}

/// Test counts of these builds (one grouped query).
pub fn test_counts(conn: &mut DbConn, build_ids: &[i64]) -> QueryResult<HashMap<i64, TestCounts>> {
    use super::schema::test_results;
    let rows: Vec<(i64, String, i64)> = test_results::table
        .filter(test_results::build_id.eq_any(build_ids))
        .group_by((test_results::build_id, test_results::result))
        .select((test_results::build_id, test_results::result, diesel::dsl::count_star()))
        .load(conn)?;
    let mut out: HashMap<i64, TestCounts> = HashMap::new();
    for (id, result, n) in rows {
        let c = out.entry(id).or_default();
        match result.as_str() {
            "passed" => c.passed += n,
            "failed" => c.failed += n,
            "error" => c.error += n,
            _ => c.skipped += n,
        }
    }
    Ok(out)
}

/// A step's name and result, for lists.
#[derive(Debug, Clone, Queryable)]
pub struct StepSummary {
    pub build_id: i64,
    pub name: String,
    pub kind: Option<String>,
    pub result: String,
}

/// Which builds a list shows.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only this branch.
    pub branch: Option<String>,
    /// Only these builders.
    pub builders: Option<Vec<i64>>,
    /// Only this revision.
    pub revision: Option<String>,
    /// Only this result.
    pub result: Option<String>,
    /// Started at or after.
    pub since: Option<NaiveDateTime>,
    /// Started before.
    pub until: Option<NaiveDateTime>,
}

/// The steps of these builds, by build, in order (one query).
pub fn step_summaries(conn: &mut DbConn, ids: &[i64]) -> QueryResult<HashMap<i64, Vec<StepSummary>>> {
    let mut steps_of: HashMap<i64, Vec<StepSummary>> = HashMap::new();
    for s in steps::table
        .filter(steps::build_id.eq_any(ids))
        .order((steps::build_id, steps::position))
        .select((steps::build_id, steps::name, steps::kind, steps::result))
        .load::<StepSummary>(conn)?
    {
        steps_of.entry(s.build_id).or_default().push(s);
    }
    Ok(steps_of)
}

/// A project's builds, newest first (by start time, then id), after `after` if given.
///
/// Two indexed queries whatever the page size: the builds, then all their steps.
pub fn newest(
    conn: &mut DbConn,
    project_id: i64,
    filter: &Filter,
    after: Option<Cursor>,
    limit: i64,
) -> QueryResult<Vec<Listed>> {
    let mut query = builds::table
        .inner_join(builders::table)
        .filter(builds::project_id.eq(project_id))
        // A revoked builder's builds leave the public lists with it (see `builders::for_project`).
        .filter(builders::status.eq(super::builders::ACTIVE))
        .select((Build::as_select(), builders::name))
        .order((builds::started_at.desc(), builds::id.desc()))
        .limit(limit)
        .into_boxed();
    if let Some(branch) = &filter.branch {
        query = query.filter(builds::branch.eq(branch.clone()));
    }
    if let Some(ids) = &filter.builders {
        query = query.filter(builds::builder_id.eq_any(ids.clone()));
    }
    if let Some(rev) = &filter.revision {
        query = query.filter(builds::revision.eq(rev.clone()));
    }
    if let Some(result) = &filter.result {
        query = query.filter(builds::result.eq(result.clone()));
    }
    if let Some(t) = filter.since {
        query = query.filter(builds::started_at.ge(t));
    }
    if let Some(t) = filter.until {
        query = query.filter(builds::started_at.lt(t));
    }
    if let Some(c) = after {
        // The plain range on started_at lets the index seek; the OR only breaks ties.
        query = query.filter(builds::started_at.le(c.started_at)).filter(
            builds::started_at.lt(c.started_at).or(builds::started_at.eq(c.started_at).and(builds::id.lt(c.id))),
        );
    }
    let rows: Vec<(Build, String)> = query.load(conn)?;
    let ids: Vec<i64> = rows.iter().map(|(b, _)| b.id).collect();
    let mut steps_of = step_summaries(conn, &ids)?;
    let tests_of = test_counts(conn, &ids)?;
    Ok(rows
        .into_iter()
        .map(|(build, builder)| Listed {
            steps: steps_of.remove(&build.id).unwrap_or_default(),
            tests: tests_of.get(&build.id).copied().unwrap_or_default(),
            build,
            builder,
        })
        .collect())
}

/// One build with its project and builder names.
#[derive(Debug, Clone)]
pub struct Full {
    pub build: Build,
    pub project: String,
    pub project_title: String,
    pub revision_url: Option<String>,
    pub builder: String,
    pub steps: Vec<Step>,
    pub tests: Vec<TestRow>,
}

/// Loads one build, its steps and tests (three queries).
pub fn get(conn: &mut DbConn, id: i64) -> QueryResult<Option<Full>> {
    let Some((build, project, project_title, revision_url, builder)) = builds::table
        .inner_join(projects::table)
        .inner_join(builders::table)
        .filter(builds::id.eq(id))
        .select((Build::as_select(), projects::name, projects::title, projects::revision_url, builders::name))
        .first::<(Build, String, String, Option<String>, String)>(conn)
        .optional()?
    else {
        return Ok(None);
    };
    let steps = steps_of(conn, id)?;
    let tests = test_results::table
        .filter(test_results::build_id.eq(id))
        .order(test_results::id)
        .select(TestRow::as_select())
        .load(conn)?;
    Ok(Some(Full { build, project, project_title, revision_url, builder, steps, tests }))
}

/// A build's steps, in order.
pub fn steps_of(conn: &mut DbConn, build_id: i64) -> QueryResult<Vec<Step>> {
    steps::table.filter(steps::build_id.eq(build_id)).order(steps::position).select(Step::as_select()).load(conn)
}

/// A step's stored log: (uncompressed size, zstd bytes, whether its build is finished).
pub fn log(conn: &mut DbConn, build_id: i64, position: i32) -> QueryResult<Option<(i64, Vec<u8>, bool)>> {
    let row: Option<(i64, Vec<u8>, String)> = steps::table
        .inner_join(logs::table)
        .inner_join(builds::table)
        .filter(steps::build_id.eq(build_id))
        .filter(steps::position.eq(position))
        .select((logs::size, logs::compressed, builds::state))
        .first(conn)
        .optional()?;
    Ok(row.map(|(size, bytes, state)| (size, bytes, state == "finished")))
}

/// Whether a build has a step at this position (to tell "no such step" from "no log").
pub fn has_step(conn: &mut DbConn, build_id: i64, position: i32) -> QueryResult<bool> {
    diesel::select(diesel::dsl::exists(
        steps::table.filter(steps::build_id.eq(build_id)).filter(steps::position.eq(position)),
    ))
    .get_result(conn)
}

/// Deletes up to `batch` builds started before `before`; returns how many went.
pub fn prune_batch(conn: &mut DbConn, before: NaiveDateTime, batch: i64) -> QueryResult<usize> {
    let ids: Vec<i64> =
        builds::table.filter(builds::started_at.lt(before)).select(builds::id).limit(batch).load(conn)?;
    if ids.is_empty() {
        return Ok(0);
    }
    // Children first: not every SQLite connection is guaranteed to enforce ON DELETE CASCADE.
    diesel::delete(steps::table.filter(steps::build_id.eq_any(&ids))).execute(conn)?;
    diesel::delete(test_results::table.filter(test_results::build_id.eq_any(&ids))).execute(conn)?;
    diesel::delete(reports::table.filter(reports::build_id.eq_any(&ids))).execute(conn)?;
    diesel::delete(super::schema::heads::table.filter(super::schema::heads::build_id.eq_any(&ids))).execute(conn)?;
    diesel::delete(builds::table.filter(builds::id.eq_any(&ids))).execute(conn)
}

/// Deletes logs that no step refers to any more; returns how many went.
pub fn prune_logs(conn: &mut DbConn) -> QueryResult<usize> {
    diesel::delete(logs::table.filter(diesel::dsl::not(diesel::dsl::exists(
        steps::table.filter(steps::log_digest.eq(logs::digest.nullable())),
    ))))
    .execute(conn)
}

/// A builder's newest builds in a project.
/// The kind of each build's first failing step, for those that have one (a failing `test`
/// step makes a build "tests failed" rather than "failed").
pub fn failing_kinds(conn: &mut DbConn, build_ids: &[i64]) -> QueryResult<std::collections::HashMap<i64, String>> {
    let rows: Vec<(i64, Option<String>)> = steps::table
        .filter(steps::build_id.eq_any(build_ids))
        .filter(steps::result.eq("failure"))
        .order((steps::build_id, steps::position))
        .select((steps::build_id, steps::kind))
        .load(conn)?;
    let mut first = std::collections::HashMap::new();
    for (id, kind) in rows {
        first.entry(id).or_insert(kind);
    }
    Ok(first.into_iter().filter_map(|(id, k)| k.map(|k| (id, k))).collect())
}

pub fn of_builder(conn: &mut DbConn, builder_id: i64, project_id: i64, limit: i64) -> QueryResult<Vec<Build>> {
    builds::table
        .filter(builds::builder_id.eq(builder_id))
        .filter(builds::project_id.eq(project_id))
        .order((builds::started_at.desc(), builds::id.desc()))
        .limit(limit)
        .select(Build::as_select())
        .load(conn)
}

/// The same builder's build in the same project just before and just after this one.
pub fn neighbours(conn: &mut DbConn, b: &Build) -> QueryResult<(Option<i64>, Option<i64>)> {
    // A builder's history is per branch: a release build's neighbours are release builds.
    let same = || {
        builds::table
            .filter(builds::builder_id.eq(b.builder_id))
            .filter(builds::project_id.eq(b.project_id))
            .filter(builds::branch.eq(b.branch.clone()))
    };
    let prev = same()
        .filter(builds::started_at.le(b.started_at))
        .filter(builds::started_at.lt(b.started_at).or(builds::started_at.eq(b.started_at).and(builds::id.lt(b.id))))
        .order((builds::started_at.desc(), builds::id.desc()))
        .select(builds::id)
        .first(conn)
        .optional()?;
    let next = same()
        .filter(builds::started_at.ge(b.started_at))
        .filter(builds::started_at.gt(b.started_at).or(builds::started_at.eq(b.started_at).and(builds::id.gt(b.id))))
        .order((builds::started_at.asc(), builds::id.asc()))
        .select(builds::id)
        .first(conn)
        .optional()?;
    Ok((prev, next))
}

/// The build before `b` on its builder and branch that was green or red: what "broke",
/// "already failing" and "first build" are decided by, on every page. Cancelled, skipped and
/// lost builds say nothing about the source and are passed over.
pub fn previous_decided(conn: &mut DbConn, b: &Build) -> QueryResult<Option<Build>> {
    let decided = || finished_history(b).filter(is_decided());
    // Two seeks along (started_at, id), not one range with an OR: builds that share a start time
    // (a builder may send many) would otherwise all be read, for every report.
    let same_time = decided()
        .filter(builds::started_at.eq(b.started_at))
        .filter(builds::id.lt(b.id))
        .order(builds::id.desc())
        .select(Build::as_select())
        .first(conn)
        .optional()?;
    if same_time.is_some() {
        return Ok(same_time);
    }
    decided()
        .filter(builds::started_at.lt(b.started_at))
        .order((builds::started_at.desc(), builds::id.desc()))
        .select(Build::as_select())
        .first(conn)
        .optional()
}

/// The results of these builds (none while one runs), by id: one query.
pub fn results(conn: &mut DbConn, ids: &[i64]) -> QueryResult<std::collections::HashMap<i64, Option<String>>> {
    if ids.is_empty() {
        return Ok(Default::default());
    }
    let rows: Vec<(i64, Option<String>)> =
        builds::table.filter(builds::id.eq_any(ids)).select((builds::id, builds::result)).load(conn)?;
    Ok(rows.into_iter().collect())
}

/// For a red build: the first red build of this builder and branch after its last green one.
pub fn failing_since(conn: &mut DbConn, b: &Build) -> QueryResult<Option<Build>> {
    let same = || finished_history(b);
    let before_this =
        builds::started_at.lt(b.started_at).or(builds::started_at.eq(b.started_at).and(builds::id.le(b.id)));
    let last_green: Option<(NaiveDateTime, i64)> = same()
        .filter(builds::started_at.le(b.started_at))
        .filter(before_this)
        .filter(builds::result.eq_any(GREEN))
        .order((builds::started_at.desc(), builds::id.desc()))
        .select((builds::started_at, builds::id))
        .first(conn)
        .optional()?;
    let mut first_red = same().filter(builds::result.eq_any(RED));
    if let Some((t, id)) = last_green {
        first_red = first_red
            .filter(builds::started_at.ge(t))
            .filter(builds::started_at.gt(t).or(builds::started_at.eq(t).and(builds::id.gt(id))));
    }
    first_red.order((builds::started_at.asc(), builds::id.asc())).select(Build::as_select()).first(conn).optional()
}

/// Makes this build the head of its (project, builder, branch) unless a newer one is.
///
/// One upsert, so two concurrent reports for the same builder and branch cannot leave the
/// older build as the head (a report spooled for days may arrive after newer ones).
pub fn update_head(conn: &mut DbConn, b: &BuildFields<'_>, build_id: i64) -> QueryResult<()> {
    upsert_head(conn, b.project_id, b.builder_id, b.branch, build_id, b.started_at)
}

fn upsert_head(
    conn: &mut DbConn,
    project_id: i64,
    builder_id: i64,
    branch: &str,
    build_id: i64,
    started_at: NaiveDateTime,
) -> QueryResult<()> {
    use super::fixed::{Bind, Fixed, Sql};
    enum UpsertHead {}
    const SQL: Sql<5> = Sql::new(
        "INSERT INTO heads (project_id, builder_id, branch, build_id, started_at) VALUES (?, ?, ?, ?, ?) \
         ON CONFLICT (project_id, builder_id, branch) DO UPDATE SET build_id = excluded.build_id, started_at = excluded.started_at \
         WHERE excluded.started_at > heads.started_at \
            OR (excluded.started_at = heads.started_at AND excluded.build_id >= heads.build_id)",
    );
    let upsert = Fixed::<UpsertHead, 5>::new(
        &SQL,
        [Bind::Int(project_id), Bind::Int(builder_id), Bind::Text(branch), Bind::Int(build_id), Bind::Time(started_at)],
    );
    dispatch!(conn, |c| upsert.execute(c))?;
    Ok(())
}

/// Sets the head of (project, builder, branch) to its newest build, if it has any left: after
/// a `finished` report moved a `started` build to another branch, the old branch's head must
/// fall back to the build before, not vanish from the status.
pub fn recompute_head(conn: &mut DbConn, project_id: i64, builder_id: i64, branch: &str) -> QueryResult<()> {
    let newest: Option<(i64, NaiveDateTime)> = builds::table
        .filter(builds::builder_id.eq(builder_id))
        .filter(builds::project_id.eq(project_id))
        .filter(builds::branch.eq(branch))
        .order((builds::started_at.desc(), builds::id.desc()))
        .select((builds::id, builds::started_at))
        .first(conn)
        .optional()?;
    if let Some((id, started_at)) = newest {
        upsert_head(conn, project_id, builder_id, branch, id, started_at)?;
    }
    Ok(())
}

/// The newest finished build of the same builder, project and branch as `b`, before it.
pub fn last_finished(conn: &mut DbConn, b: &Build) -> QueryResult<Option<Build>> {
    finished_history(b)
        .filter(builds::started_at.le(b.started_at))
        .order((builds::started_at.desc(), builds::id.desc()))
        .select(Build::as_select())
        .first(conn)
        .optional()
}

/// `builds.result = 'x'`.
type ResultIs = diesel::dsl::Eq<builds::result, &'static str>;

/// `result IN DECIDED`, written as comparisons: diesel prepares a statement with an `IN` list
/// again every time it runs, and these run for every report (`db::fixed`).
fn is_decided() -> diesel::dsl::Or<diesel::dsl::Or<ResultIs, ResultIs>, ResultIs> {
    let [a, b, c] = DECIDED;
    builds::result.eq(a).or(builds::result.eq(b)).or(builds::result.eq(c))
}

/// The finished builds of `b`'s builder, project and branch: the history "broke", "fixed"
/// and "first build" are read from.
fn finished_history(b: &Build) -> builds::BoxedQuery<'static, <DbConn as diesel::Connection>::Backend> {
    builds::table
        .filter(builds::builder_id.eq(b.builder_id))
        .filter(builds::project_id.eq(b.project_id))
        .filter(builds::branch.eq(b.branch.clone()))
        .filter(builds::state.eq("finished"))
        // A disputed answer is neither green nor red (`results::verdict::colour`).
        .filter(builds::agreement.is_null().or(builds::agreement.ne("disputed")))
        .into_boxed()
}

/// Whether a green or red build of `b`'s builder and branch started after it: then `b` (a
/// report that arrived late) is not what anyone sees as that builder's status now.
pub fn later_decided(conn: &mut DbConn, b: &Build) -> QueryResult<bool> {
    let decided = || finished_history(b).filter(is_decided());
    // Two seeks, as in `previous_decided`.
    let same_time = decided()
        .filter(builds::started_at.eq(b.started_at))
        .filter(builds::id.gt(b.id))
        .select(builds::id)
        .first::<i64>(conn)
        .optional()?;
    if same_time.is_some() {
        return Ok(true);
    }
    decided()
        .filter(builds::started_at.gt(b.started_at))
        .select(builds::id)
        .first::<i64>(conn)
        .optional()
        .map(|found| found.is_some())
}

/// Whether `b`'s builder finished any build on its branch before `b`: if not, `b` is its first.
pub fn earlier_finished(conn: &mut DbConn, b: &Build) -> QueryResult<bool> {
    finished_history(b)
        .filter(builds::id.ne(b.id))
        .filter(builds::started_at.le(b.started_at))
        .select(builds::id)
        .first::<i64>(conn)
        .optional()
        .map(|found| found.is_some())
}

/// One build by id.
pub fn by_id(conn: &mut DbConn, id: i64) -> QueryResult<Option<Build>> {
    builds::table.find(id).select(Build::as_select()).first(conn).optional()
}
