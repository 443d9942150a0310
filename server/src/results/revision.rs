//! What a revision's commit status says (DESIGN "Where projects already look"): one status per
//! builder, from its newest build of the revision, and a summary, in the forge-neutral words
//! `pending`, `running`, `success`, `failure`, `error` and `cancelled` (each forge's own words
//! are in `notify::forge`).
//!
//! The summary is `pending` while a requested slot is open or a build is running — a pull
//! request must never look all-green while builders have not begun — `error` for a disputed
//! revision (a dispute never looks green), and otherwise the worst of the builders' newest
//! results.

use std::collections::HashSet;

use diesel::prelude::*;

use super::verdict::of;
use crate::db::models::Build;
use crate::db::schema::{build_requests, builders, builds};
use crate::db::{DbConn, builds as builds_db};

/// A commit status, before it is put in a forge's words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// `pending`, `running`, `success`, `failure`, `error` or `cancelled`.
    pub state: &'static str,
    /// One line, at most [`DESCRIPTION_CHARS`] characters (GitHub's limit is 140).
    pub description: String,
    /// The build the status links to, if any (otherwise the project's requests page).
    pub build_id: Option<i64>,
}

/// GitHub refuses longer descriptions (422).
pub const DESCRIPTION_CHARS: usize = 140;

/// Builds of one revision looked at, newest first: a revision is built a handful of times, and
/// a builder that reports it a million times must not make every report read them all.
const BUILDS_READ: i64 = 1_000;

/// Whether a revision names a commit a forge can take a status for: a full SHA-1 or SHA-256 in
/// hex. Branch names, tags and abbreviated ids are not (the forge would answer 422).
pub fn is_commit(revision: &str) -> bool {
    matches!(revision.len(), 40 | 64) && revision.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A builder's newest build of a revision, with its builder's name.
#[derive(Debug, Clone)]
pub struct Latest {
    pub builder: String,
    pub build: Build,
    /// The kind of its first failing step (`test` makes a failure "tests failed").
    pub failing_kind: Option<String>,
}

/// Each builder's newest build of a revision, by builder name.
pub fn latest(conn: &mut DbConn, project_id: i64, revision: &str) -> QueryResult<Vec<Latest>> {
    let rows: Vec<(Build, String)> = builds::table
        .inner_join(builders::table)
        .filter(builds::project_id.eq(project_id))
        .filter(builds::revision.eq(revision))
        .order((builds::started_at.desc(), builds::id.desc()))
        .limit(BUILDS_READ)
        .select((Build::as_select(), builders::name))
        .load(conn)?;
    let mut seen = HashSet::new();
    let newest: Vec<(Build, String)> = rows.into_iter().filter(|(b, _)| seen.insert(b.builder_id)).collect();
    let ids: Vec<i64> = newest.iter().map(|(b, _)| b.id).collect();
    let mut kinds = builds_db::failing_kinds(conn, &ids)?;
    let mut out: Vec<Latest> = newest
        .into_iter()
        .map(|(b, builder)| Latest { failing_kind: kinds.remove(&b.id), builder, build: b })
        .collect();
    out.sort_by(|a, b| a.builder.cmp(&b.builder));
    Ok(out)
}

/// A builder's status, from its newest build of the revision.
pub fn of_builder(l: &Latest) -> Status {
    let (class, _, word) = of(&l.build, l.failing_kind.as_deref());
    let (state, description) = match class {
        "building" => ("running", format!("building since {} UTC", l.build.started_at.format("%H:%M"))),
        "lost" => ("error", "lost: the builder went silent mid-build".to_owned()),
        "disputed" => ("error", "disputed: other builders disagree with this result".to_owned()),
        "success" | "warnings" => ("success", word.to_owned()),
        "tests-failed" | "failure" => ("failure", word.to_owned()),
        "exception" => ("error", "exception: the build could not run".to_owned()),
        "skipped" | "cancelled" => ("cancelled", word.to_owned()),
        _ => ("pending", word.to_owned()),
    };
    Status { state, description, build_id: Some(l.build.id) }
}

/// How bad a builder state is for the summary: the worst one decides it.
fn badness(state: &str) -> u8 {
    match state {
        "failure" => 4,
        "error" => 3,
        "cancelled" => 2,
        "success" => 1,
        _ => 0,
    }
}

/// The revision's summary, or None when there is nothing to say (no build, no request).
pub fn summary(conn: &mut DbConn, project_id: i64, revision: &str, latest: &[Latest]) -> QueryResult<Option<Status>> {
    let requests: Vec<(i64, String, Option<String>)> = build_requests::table
        .filter(build_requests::project_id.eq(project_id))
        .filter(build_requests::revision.eq(revision))
        .order(build_requests::id.desc())
        .limit(100)
        .select((build_requests::id, build_requests::state, build_requests::verdict))
        .load(conn)?;
    let open: Vec<i64> = requests.iter().filter(|(_, s, _)| s == "open").map(|(id, ..)| *id).collect();
    let disputed_request = requests.iter().find(|(.., v)| v.as_deref() == Some("disputed")).map(|(id, ..)| *id);
    let states: Vec<(Status, &Latest)> = latest.iter().map(|l| (of_builder(l), l)).collect();
    if latest.is_empty() && requests.is_empty() {
        return Ok(None);
    }
    let first_build = |pred: &dyn Fn(&Status) -> bool| states.iter().find(|(s, _)| pred(s)).map(|(_, l)| l.build.id);
    let names = |pred: &dyn Fn(&Status) -> bool| {
        states.iter().filter(|(s, _)| pred(s)).map(|(_, l)| l.builder.as_str()).collect::<Vec<_>>()
    };
    let disputed = names(&|s| s.description.starts_with("disputed"));
    if disputed_request.is_some() || !disputed.is_empty() {
        let who = if disputed.is_empty() { String::new() } else { format!(" ({})", disputed.join(", ")) };
        let asked = if open.is_empty() { "" } else { "; another builder is asked" };
        return Ok(Some(status(
            "error",
            format!("disputed: builders disagree on this revision{who}{asked}"),
            first_build(&|s| s.description.starts_with("disputed")).or_else(|| latest.first().map(|l| l.build.id)),
        )));
    }
    let running = names(&|s| s.state == "running" || s.state == "pending");
    if !open.is_empty() || !running.is_empty() {
        let done = states.len() - running.len();
        let mut parts = Vec::new();
        if done > 0 {
            parts.push(format!("{done} done"));
        }
        if !running.is_empty() {
            parts.push(format!("building on {}", running.join(", ")));
        }
        if !open.is_empty() {
            parts.push("waiting for builders".to_owned());
        }
        return Ok(Some(status("pending", parts.join(", "), first_build(&|s| s.state == "running"))));
    }
    let Some(worst) = states.iter().map(|(s, _)| s.state).max_by_key(|s| badness(s)) else {
        // Requests, all ended, and no build: nobody answered.
        let ended = requests.first().map(|(id, ..)| *id).unwrap_or_default();
        return Ok(Some(status("error", format!("no builds: request {ended} ended without any"), None)));
    };
    let by_worst = names(&|s| s.state == worst);
    let total = states.len();
    let of_total = if total == 1 { String::new() } else { format!(" ({} of {total} builders)", by_worst.len()) };
    let description = match worst {
        "success" => format!("success on {total} builder{}", if total == 1 { "" } else { "s" }),
        "failure" => format!("failed on {}{of_total}", by_worst.join(", ")),
        "error" => format!("error on {}{of_total}", by_worst.join(", ")),
        _ => format!("cancelled on {}{of_total}", by_worst.join(", ")),
    };
    Ok(Some(status(worst, description, first_build(&|s| s.state == worst))))
}

fn status(state: &'static str, description: String, build_id: Option<i64>) -> Status {
    Status { state, description: clip(&description), build_id }
}

/// At most [`DESCRIPTION_CHARS`] characters, an ellipsis marking a cut.
fn clip(s: &str) -> String {
    if s.chars().count() <= DESCRIPTION_CHARS {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(DESCRIPTION_CHARS - 1).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_full_commit_ids_get_statuses() {
        assert!(is_commit(&"a".repeat(40)));
        assert!(is_commit("0123456789abcdefABCDEF0123456789abcdef01"));
        assert!(is_commit(&"f".repeat(64)));
        assert!(!is_commit("abc1234"));
        assert!(!is_commit("main"));
        assert!(!is_commit(&"g".repeat(40)));
    }

    #[test]
    fn descriptions_fit_github() {
        let long = "x".repeat(500);
        assert_eq!(clip(&long).chars().count(), DESCRIPTION_CHARS);
        assert_eq!(clip("short"), "short");
    }

    #[test]
    fn failure_is_worse_than_error_worse_than_success() {
        assert!(badness("failure") > badness("error"));
        assert!(badness("error") > badness("cancelled"));
        assert!(badness("cancelled") > badness("success"));
    }
}
