//! A project's signing keys and key lists, its published recipes and the capabilities they may
//! require.

use chrono::NaiveDateTime;
use diesel::prelude::*;

use super::DbConn;
use super::models::{Capability, KeyListRow, NewProjectKey, ProjectKey, RecipeRow};
use super::schema::{key_lists, project_capabilities, project_keys, recipes};

/// Every key of a project, oldest first (the order a rotation chain grows in).
pub fn keys(conn: &mut DbConn, project_id: i64) -> QueryResult<Vec<ProjectKey>> {
    project_keys::table
        .filter(project_keys::project_id.eq(project_id))
        .order(project_keys::id)
        .select(ProjectKey::as_select())
        .load(conn)
}

/// The keys that may sign for a project now.
pub fn active_keys(conn: &mut DbConn, project_id: i64) -> QueryResult<Vec<ProjectKey>> {
    Ok(keys(conn, project_id)?.into_iter().filter(|k| k.revoked_at.is_none()).collect())
}

/// Adds a key; one already there (revoked or not) is a unique violation for the caller.
pub fn add_key(conn: &mut DbConn, new: &NewProjectKey<'_>) -> QueryResult<()> {
    diesel::insert_into(project_keys::table).values(new).execute(conn).map(drop)
}

/// Revokes a key; false when the project has no such unrevoked key.
pub fn revoke_key(conn: &mut DbConn, project_id: i64, fingerprint: &str, at: NaiveDateTime) -> QueryResult<bool> {
    let n = diesel::update(
        project_keys::table
            .filter(project_keys::project_id.eq(project_id))
            .filter(project_keys::fingerprint.eq(fingerprint))
            .filter(project_keys::revoked_at.is_null()),
    )
    .set(project_keys::revoked_at.eq(at))
    .execute(conn)?;
    Ok(n > 0)
}

/// The newest published key list.
pub fn current_key_list(conn: &mut DbConn, project_id: i64) -> QueryResult<Option<KeyListRow>> {
    key_lists::table
        .filter(key_lists::project_id.eq(project_id))
        .order(key_lists::version.desc())
        .select(KeyListRow::as_select())
        .first(conn)
        .optional()
}

/// One published key list version.
pub fn key_list_by_version(conn: &mut DbConn, project_id: i64, version: i64) -> QueryResult<Option<KeyListRow>> {
    key_lists::table
        .filter(key_lists::project_id.eq(project_id))
        .filter(key_lists::version.eq(version))
        .select(KeyListRow::as_select())
        .first(conn)
        .optional()
}

/// Every key list version, oldest first, with its bytes (they are few and small: the revoked
/// keys of all of them are read at publication).
pub fn key_lists(conn: &mut DbConn, project_id: i64) -> QueryResult<Vec<KeyListRow>> {
    key_lists::table
        .filter(key_lists::project_id.eq(project_id))
        .order(key_lists::version.asc())
        .select(KeyListRow::as_select())
        .load(conn)
}

/// Records a key list; a version taken meanwhile is a unique violation.
pub fn publish_key_list(conn: &mut DbConn, row: &KeyListRow) -> QueryResult<()> {
    diesel::insert_into(key_lists::table).values(row).execute(conn).map(drop)
}

/// The newest published recipe.
pub fn current(conn: &mut DbConn, project_id: i64) -> QueryResult<Option<RecipeRow>> {
    recipes::table
        .filter(recipes::project_id.eq(project_id))
        .order(recipes::version.desc())
        .select(RecipeRow::as_select())
        .first(conn)
        .optional()
}

/// One published version.
pub fn by_version(conn: &mut DbConn, project_id: i64, version: i64) -> QueryResult<Option<RecipeRow>> {
    recipes::table
        .filter(recipes::project_id.eq(project_id))
        .filter(recipes::version.eq(version))
        .select(RecipeRow::as_select())
        .first(conn)
        .optional()
}

/// Every published version, newest first, without the bytes.
pub fn history(conn: &mut DbConn, project_id: i64) -> QueryResult<Vec<(i64, String, String, NaiveDateTime)>> {
    recipes::table
        .filter(recipes::project_id.eq(project_id))
        .order(recipes::version.desc())
        .select((recipes::version, recipes::digest, recipes::key_fingerprint, recipes::published_at))
        .load(conn)
}

/// Records a publication; a version taken meanwhile is a unique violation.
pub fn publish(conn: &mut DbConn, row: &RecipeRow) -> QueryResult<()> {
    diesel::insert_into(recipes::table).values(row).execute(conn).map(drop)
}

/// A project's capabilities, by name.
pub fn capabilities(conn: &mut DbConn, project_id: i64) -> QueryResult<Vec<Capability>> {
    project_capabilities::table
        .filter(project_capabilities::project_id.eq(project_id))
        .order(project_capabilities::name)
        .select(Capability::as_select())
        .load(conn)
}

/// Adds a capability, or changes its description.
pub fn set_capability(conn: &mut DbConn, cap: &Capability) -> QueryResult<()> {
    let updated = diesel::update(
        project_capabilities::table
            .filter(project_capabilities::project_id.eq(cap.project_id))
            .filter(project_capabilities::name.eq(&cap.name)),
    )
    .set(project_capabilities::description.eq(&cap.description))
    .execute(conn)?;
    if updated == 0 {
        diesel::insert_into(project_capabilities::table).values(cap).execute(conn)?;
    }
    Ok(())
}

/// Removes a capability; false when there was none.
pub fn remove_capability(conn: &mut DbConn, project_id: i64, name: &str) -> QueryResult<bool> {
    let n = diesel::delete(
        project_capabilities::table
            .filter(project_capabilities::project_id.eq(project_id))
            .filter(project_capabilities::name.eq(name)),
    )
    .execute(conn)?;
    Ok(n > 0)
}
