//! Builders, their keys and the projects they may report for.

use std::collections::HashMap;

use chrono::NaiveDateTime;
use diesel::prelude::*;

use super::models::{Builder, BuilderKey, NewBuilder, NewBuilderKey};
use super::schema::{builder_keys, builder_project_requests, builder_projects, builders, projects};
use super::{DbConn, now};
use crate::dispatch;

/// A builder may report.
pub const ACTIVE: &str = "active";
/// A self-registered builder waiting for an admin's approval.
pub const PENDING: &str = "pending";
/// A builder whose reports are refused for good.
pub const REVOKED: &str = "revoked";

/// The builder called `name`.
pub fn by_name(conn: &mut DbConn, name: &str) -> QueryResult<Option<Builder>> {
    builders::table.filter(builders::name.eq(name)).select(Builder::as_select()).first(conn).optional()
}

/// All of a builder's keys, revoked ones included (a revoked key still identifies who signed).
pub fn keys(conn: &mut DbConn, builder_id: i64) -> QueryResult<Vec<BuilderKey>> {
    builder_keys::table
        .filter(builder_keys::builder_id.eq(builder_id))
        .order(builder_keys::id)
        .select(BuilderKey::as_select())
        .load(conn)
}

/// Creates a builder.
pub fn add(conn: &mut DbConn, new: &NewBuilder<'_>) -> QueryResult<Builder> {
    diesel::insert_into(builders::table).values(new).execute(conn)?;
    builders::table.filter(builders::name.eq(new.name)).select(Builder::as_select()).first(conn)
}

/// Adds a key unless the builder has it already; true if it was added.
pub fn add_key(conn: &mut DbConn, builder_id: i64, fingerprint: &str, pem: &str) -> QueryResult<bool> {
    let row = NewBuilderKey { builder_id, fingerprint, public_key: pem, created_at: now() };
    let n = dispatch!(conn, |c| diesel::insert_into(builder_keys::table)
        .values(&row)
        .on_conflict((builder_keys::builder_id, builder_keys::fingerprint))
        .do_nothing()
        .execute(c))?;
    Ok(n > 0)
}

/// Lets a builder report for a project (idempotent).
pub fn allow(conn: &mut DbConn, builder_id: i64, project_id: i64) -> QueryResult<()> {
    dispatch!(conn, |c| diesel::insert_into(builder_projects::table)
        .values((builder_projects::builder_id.eq(builder_id), builder_projects::project_id.eq(project_id)))
        .on_conflict_do_nothing()
        .execute(c))?;
    Ok(())
}

/// Records that a builder asks to report for one more project (approved with the builder).
pub fn request_project(conn: &mut DbConn, builder_id: i64, project_id: i64) -> QueryResult<()> {
    dispatch!(conn, |c| diesel::insert_into(builder_project_requests::table)
        .values((
            builder_project_requests::builder_id.eq(builder_id),
            builder_project_requests::project_id.eq(project_id),
            builder_project_requests::requested_at.eq(now()),
        ))
        .on_conflict_do_nothing()
        .execute(c))?;
    Ok(())
}

/// The projects a builder asked to join and waits for, by name.
pub fn requested_projects(conn: &mut DbConn, builder_id: i64) -> QueryResult<Vec<String>> {
    builder_project_requests::table
        .inner_join(projects::table)
        .filter(builder_project_requests::builder_id.eq(builder_id))
        .order(projects::name)
        .select(projects::name)
        .load(conn)
}

/// Grants a builder every project it asked for; returns their names.
pub fn grant_requests(conn: &mut DbConn, builder_id: i64) -> QueryResult<Vec<String>> {
    let wanted: Vec<(i64, String)> = builder_project_requests::table
        .inner_join(projects::table)
        .filter(builder_project_requests::builder_id.eq(builder_id))
        .order(projects::name)
        .select((projects::id, projects::name))
        .load(conn)?;
    for (project_id, _) in &wanted {
        allow(conn, builder_id, *project_id)?;
    }
    diesel::delete(builder_project_requests::table.filter(builder_project_requests::builder_id.eq(builder_id)))
        .execute(conn)?;
    Ok(wanted.into_iter().map(|(_, name)| name).collect())
}

/// Whether a builder may report for a project.
pub fn may_report(conn: &mut DbConn, builder_id: i64, project_id: i64) -> QueryResult<bool> {
    diesel::select(diesel::dsl::exists(
        builder_projects::table
            .filter(builder_projects::builder_id.eq(builder_id))
            .filter(builder_projects::project_id.eq(project_id)),
    ))
    .get_result(conn)
}

/// Sets a builder's status; false if there is no such builder.
pub fn set_status(conn: &mut DbConn, name: &str, status: &str) -> QueryResult<bool> {
    let n = diesel::update(builders::table.filter(builders::name.eq(name)))
        .set(builders::status.eq(status))
        .execute(conn)?;
    Ok(n > 0)
}

/// Revokes one key of a builder; false if it has no such key.
pub fn revoke_key(conn: &mut DbConn, builder_id: i64, fingerprint: &str) -> QueryResult<bool> {
    let n = diesel::update(
        builder_keys::table
            .filter(builder_keys::builder_id.eq(builder_id))
            .filter(builder_keys::fingerprint.eq(fingerprint))
            .filter(builder_keys::revoked_at.is_null()),
    )
    .set(builder_keys::revoked_at.eq(Some(now())))
    .execute(conn)?;
    Ok(n > 0)
}

/// Records that a builder reported, with the properties it reported.
pub fn touch(conn: &mut DbConn, builder_id: i64, properties: &str, at: NaiveDateTime) -> QueryResult<()> {
    use super::fixed::{Bind, Fixed, Sql};
    enum Touch {}
    const SQL: Sql<3> = Sql::new("UPDATE builders SET last_report_at = ?, properties = ? WHERE id = ?");
    let touch = Fixed::<Touch, 3>::new(&SQL, [Bind::Time(at), Bind::Text(properties), Bind::Int(builder_id)]);
    dispatch!(conn, |c| touch.execute(c))?;
    Ok(())
}

/// A builder with what an admin wants to see of it.
#[derive(Debug)]
pub struct Listed {
    pub builder: Builder,
    pub projects: Vec<String>,
    pub keys: Vec<BuilderKey>,
}

/// Every builder (or those with this status) with its projects and keys (three queries,
/// whatever the count).
pub fn list(conn: &mut DbConn, status: Option<&str>) -> QueryResult<Vec<Listed>> {
    let mut q = builders::table.order(builders::name).select(Builder::as_select()).into_boxed();
    if let Some(status) = status {
        q = q.filter(builders::status.eq(status.to_owned()));
    }
    let all: Vec<Builder> = q.load(conn)?;
    let mut projects_of: HashMap<i64, Vec<String>> = HashMap::new();
    for (b, p) in builder_projects::table
        .inner_join(projects::table)
        .order(projects::name)
        .select((builder_projects::builder_id, projects::name))
        .load::<(i64, String)>(conn)?
    {
        projects_of.entry(b).or_default().push(p);
    }
    let mut keys_of: HashMap<i64, Vec<BuilderKey>> = HashMap::new();
    for k in builder_keys::table.order(builder_keys::id).select(BuilderKey::as_select()).load(conn)? {
        keys_of.entry(k.builder_id).or_default().push(k);
    }
    Ok(all
        .into_iter()
        .map(|b| Listed {
            projects: projects_of.remove(&b.id).unwrap_or_default(),
            keys: keys_of.remove(&b.id).unwrap_or_default(),
            builder: b,
        })
        .collect())
}

/// One builder with its projects and keys.
pub fn listed(conn: &mut DbConn, name: &str) -> QueryResult<Option<Listed>> {
    let Some(builder) = by_name(conn, name)? else {
        return Ok(None);
    };
    let projects = builder_projects::table
        .inner_join(projects::table)
        .filter(builder_projects::builder_id.eq(builder.id))
        .order(projects::name)
        .select(projects::name)
        .load(conn)?;
    let keys = keys(conn, builder.id)?;
    Ok(Some(Listed { builder, projects, keys }))
}

/// The active builders allowed to report for a project: the waterfall's columns. Pending and
/// revoked builders appear on no public page or feed (anyone can register a pending one).
pub fn for_project(conn: &mut DbConn, project_id: i64) -> QueryResult<Vec<Builder>> {
    builders::table
        .filter(builders::status.eq(ACTIVE))
        .filter(
            builders::id.eq_any(
                builder_projects::table
                    .filter(builder_projects::project_id.eq(project_id))
                    .select(builder_projects::builder_id),
            ),
        )
        .order(builders::name)
        .select(Builder::as_select())
        .load(conn)
}

/// When each active builder last reported, by id.
pub fn last_seen(conn: &mut DbConn) -> QueryResult<HashMap<i64, Option<NaiveDateTime>>> {
    Ok(builders::table
        .filter(builders::status.eq(ACTIVE))
        .select((builders::id, builders::last_report_at))
        .load::<(i64, Option<NaiveDateTime>)>(conn)?
        .into_iter()
        .collect())
}

/// How many self-registered builders wait for approval in a project.
pub fn pending_count(conn: &mut DbConn, project_id: i64) -> QueryResult<i64> {
    builder_projects::table
        .inner_join(builders::table)
        .filter(builder_projects::project_id.eq(project_id))
        .filter(builders::status.eq(PENDING))
        .count()
        .get_result(conn)
}

/// Notes the network a self-registration came from.
pub fn set_registered_from(conn: &mut DbConn, builder_id: i64, network: &str) -> QueryResult<()> {
    diesel::update(builders::table.find(builder_id)).set(builders::registered_from.eq(network)).execute(conn).map(drop)
}

/// Registrations from `network` waiting for approval in a project.
pub fn pending_from(conn: &mut DbConn, project_id: i64, network: &str) -> QueryResult<i64> {
    builder_projects::table
        .inner_join(builders::table)
        .filter(builder_projects::project_id.eq(project_id))
        .filter(builders::status.eq(PENDING))
        .filter(builders::registered_from.eq(network))
        .count()
        .get_result(conn)
}

/// The oldest pending registration of the network holding most of a project's pending ones,
/// if that network holds more than one and is not `except`: (its name, its network, how many).
pub fn most_crowded_pending(
    conn: &mut DbConn,
    project_id: i64,
    except: Option<&str>,
) -> QueryResult<Option<(String, String, i64)>> {
    let networks: Vec<(Option<String>, i64)> = builder_projects::table
        .inner_join(builders::table)
        .filter(builder_projects::project_id.eq(project_id))
        .filter(builders::status.eq(PENDING))
        .group_by(builders::registered_from)
        .select((builders::registered_from, diesel::dsl::count_star()))
        .load(conn)?;
    let Some((network, n)) = networks
        .into_iter()
        .filter_map(|(net, n)| net.map(|net| (net, n)))
        .filter(|(net, n)| *n > 1 && Some(net.as_str()) != except)
        .max_by_key(|(net, n)| (*n, std::cmp::Reverse(net.clone())))
    else {
        return Ok(None);
    };
    let oldest: Option<String> = builder_projects::table
        .inner_join(builders::table)
        .filter(builder_projects::project_id.eq(project_id))
        .filter(builders::status.eq(PENDING))
        .filter(builders::registered_from.eq(&network))
        .order((builders::created_at.asc(), builders::id.asc()))
        .select(builders::name)
        .first(conn)
        .optional()?;
    Ok(oldest.map(|name| (name, network, n)))
}

/// Deletes pending builders (and their keys and projects): the named ones, or all registered
/// before `before`. A builder that is not pending is left alone. Returns the names deleted.
pub fn reject_pending(
    conn: &mut DbConn,
    names: Option<&[String]>,
    before: Option<NaiveDateTime>,
) -> QueryResult<Vec<String>> {
    let mut q =
        builders::table.filter(builders::status.eq(PENDING)).select((builders::id, builders::name)).into_boxed();
    if let Some(names) = names {
        q = q.filter(builders::name.eq_any(names.to_vec()));
    }
    if let Some(t) = before {
        q = q.filter(builders::created_at.lt(t));
    }
    let found: Vec<(i64, String)> = q.load(conn)?;
    let ids: Vec<i64> = found.iter().map(|(id, _)| *id).collect();
    // Chunks keep each statement under SQLite's bound-variable limit.
    for chunk in ids.chunks(5000) {
        diesel::delete(builder_keys::table.filter(builder_keys::builder_id.eq_any(chunk))).execute(conn)?;
        diesel::delete(builder_projects::table.filter(builder_projects::builder_id.eq_any(chunk))).execute(conn)?;
        diesel::delete(builders::table.filter(builders::id.eq_any(chunk))).execute(conn)?;
    }
    Ok(found.into_iter().map(|(_, name)| name).collect())
}
