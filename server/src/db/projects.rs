//! Projects.

use diesel::prelude::*;

use super::DbConn;
use super::models::{NewProject, Project};
use super::schema::projects;

/// Adds a project; a name already taken is a unique violation for the caller to explain.
pub fn add(conn: &mut DbConn, new: &NewProject<'_>) -> QueryResult<Project> {
    diesel::insert_into(projects::table).values(new).execute(conn)?;
    projects::table.filter(projects::name.eq(new.name)).select(Project::as_select()).first(conn)
}

/// The project called `name`.
pub fn by_name(conn: &mut DbConn, name: &str) -> QueryResult<Option<Project>> {
    projects::table.filter(projects::name.eq(name)).select(Project::as_select()).first(conn).optional()
}

/// Every project, by name.
pub fn list(conn: &mut DbConn) -> QueryResult<Vec<Project>> {
    projects::table.order(projects::name).select(Project::as_select()).load(conn)
}
