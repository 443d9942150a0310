//! Where things stand: the newest build of every builder in a project (or in all projects),
//! in a fixed number of indexed queries whatever the number of builds stored.

use std::collections::HashMap;

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Nullable};

use super::DbConn;
use super::builds::StepSummary;
use super::models::Build;
use super::schema::{builds, steps};

/// The newest build of a builder in a project, with its steps.
#[derive(Debug, Clone)]
pub struct Latest {
    pub project_id: i64,
    pub builder_id: i64,
    pub build: Option<Build>,
    pub steps: Vec<StepSummary>,
}

impl Latest {
    /// The kind of the first failing step (a `test` failure is orange, others red).
    pub fn failing_kind(&self) -> Option<&str> {
        self.steps.iter().find(|s| s.result == "failure").and_then(|s| s.kind.as_deref())
    }
}

#[derive(QueryableByName)]
struct Row {
    #[diesel(sql_type = BigInt)]
    project_id: i64,
    #[diesel(sql_type = BigInt)]
    builder_id: i64,
    #[diesel(sql_type = Nullable<BigInt>)]
    build_id: Option<i64>,
}

/// One row per (project, active builder allowed to report for it), each found through the
/// `builds_builder_project_newest` index. Pending and revoked builders are not shown.
const LATEST: &str = "SELECT bp.project_id, bp.builder_id, \
     (SELECT x.id FROM builds x WHERE x.builder_id = bp.builder_id AND x.project_id = bp.project_id \
      ORDER BY x.started_at DESC, x.id DESC LIMIT 1) AS build_id \
     FROM builder_projects bp JOIN builders b ON b.id = bp.builder_id AND b.status = 'active'";

/// The newest build of each builder of `project` (or of every project when `None`).
pub fn latest(conn: &mut DbConn, project: Option<i64>) -> QueryResult<Vec<Latest>> {
    let rows: Vec<Row> = match (&mut *conn, project) {
        (DbConn::Sqlite(c), Some(p)) => {
            diesel::sql_query(format!("{LATEST} WHERE bp.project_id = ?")).bind::<BigInt, _>(p).load(c)?
        }
        (DbConn::Pg(c), Some(p)) => {
            diesel::sql_query(format!("{LATEST} WHERE bp.project_id = $1")).bind::<BigInt, _>(p).load(c)?
        }
        (DbConn::Sqlite(c), None) => diesel::sql_query(LATEST).load(c)?,
        (DbConn::Pg(c), None) => diesel::sql_query(LATEST).load(c)?,
    };
    let ids: Vec<i64> = rows.iter().filter_map(|r| r.build_id).collect();
    let mut by_id: HashMap<i64, Build> = builds::table
        .filter(builds::id.eq_any(&ids))
        .select(Build::as_select())
        .load(conn)?
        .into_iter()
        .map(|b| (b.id, b))
        .collect();
    let mut steps_of = super::builds::step_summaries(conn, &ids)?;
    Ok(rows
        .into_iter()
        .map(|r| Latest {
            project_id: r.project_id,
            builder_id: r.builder_id,
            steps: r.build_id.and_then(|id| steps_of.remove(&id)).unwrap_or_default(),
            build: r.build_id.and_then(|id| by_id.remove(&id)),
        })
        .collect())
}

/// The newest build of one builder on one branch.
#[derive(Debug, Clone)]
pub struct Head {
    pub builder: crate::db::models::Builder,
    pub build: Build,
    /// Kind of the first failing step, if any (`test` failures are orange).
    pub failing_kind: Option<String>,
}

/// Every (builder, branch) head of a project, optionally narrowed; two queries.
pub fn heads(
    conn: &mut DbConn,
    project_id: i64,
    builder: Option<&str>,
    branch: Option<&str>,
) -> QueryResult<Vec<Head>> {
    use super::models::Builder;
    use super::schema::{builders, heads};
    let mut q = heads::table
        .inner_join(builds::table)
        .inner_join(builders::table.on(builders::id.eq(heads::builder_id)))
        .filter(heads::project_id.eq(project_id))
        // Revoked builders are off the public pages (see `builders::for_project`).
        .filter(builders::status.eq(super::builders::ACTIVE))
        .select((Builder::as_select(), Build::as_select()))
        .order((builders::name, heads::branch))
        .into_boxed();
    if let Some(b) = builder {
        q = q.filter(builders::name.eq(b.to_owned()));
    }
    if let Some(br) = branch {
        q = q.filter(heads::branch.eq(br.to_owned()));
    }
    let rows: Vec<(Builder, Build)> = q.load(conn)?;
    let ids: Vec<i64> = rows.iter().map(|(_, b)| b.id).collect();
    let mut failing: HashMap<i64, Option<String>> = HashMap::new();
    for (id, kind) in steps::table
        .filter(steps::build_id.eq_any(&ids))
        .filter(steps::result.eq("failure"))
        .order((steps::build_id, steps::position))
        .select((steps::build_id, steps::kind))
        .load::<(i64, Option<String>)>(conn)?
    {
        failing.entry(id).or_insert(kind);
    }
    Ok(rows
        .into_iter()
        .map(|(builder, build)| Head { failing_kind: failing.get(&build.id).cloned().flatten(), builder, build })
        .collect())
}
