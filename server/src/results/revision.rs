//! What a revision's commit status says (DESIGN "Where projects already look"): one status per
//! builder, from its newest build of the revision, and a summary, in the forge-neutral words
//! `pending`, `running`, `success`, `failure`, `error` and `cancelled` (each forge's own words
//! are in `notify::forge`).
//!
//! The summary is `pending` while a requested slot is open or a build is running — a pull
//! request must never look all-green while builders have not begun — `error` for a disputed
//! revision (a dispute never looks green) until its builders agree, and otherwise the worst of
//! the builders' newest results that say something about the code (a cancelled build, or one
//! that could not run, counts only when no builder has a success or a failure).

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

/// Whether a builder's state says something about the code: a success or a failure does; a
/// cancelled build, or one that could not run (the volunteer's sandbox, a refusal), does not,
/// and must not turn a pull request red when other builders have answered.
fn decisive(state: &str) -> bool {
    matches!(state, "success" | "failure")
}

/// The revision's summary, or None when there is nothing to say (no build, no request).
///
/// A dispute still open is `error`. Once a request's builders have agreed, its verdict stands:
/// the builders who dissented are named, not counted. Otherwise the worst of the decisive
/// results; only when no builder has one, the worst of the others (cancelled, error).
pub fn summary(conn: &mut DbConn, project_id: i64, revision: &str, latest: &[Latest]) -> QueryResult<Option<Status>> {
    let requests: Vec<(i64, String, Option<String>)> = build_requests::table
        .filter(build_requests::project_id.eq(project_id))
        .filter(build_requests::revision.eq(revision))
        .order(build_requests::id.desc())
        .limit(100)
        .select((build_requests::id, build_requests::state, build_requests::verdict))
        .load(conn)?;
    Ok(summarise(&requests, latest))
}

/// [`summary`] once the revision's requests (id, state, verdict; newest first) are read.
fn summarise(requests: &[(i64, String, Option<String>)], latest: &[Latest]) -> Option<Status> {
    if latest.is_empty() && requests.is_empty() {
        return None;
    }
    let open = requests.iter().any(|(_, s, _)| s == "open");
    let verdict = |v: &str| requests.iter().any(|(.., r)| r.as_deref() == Some(v));
    let states: Vec<(Status, &Latest)> = latest.iter().map(|l| (of_builder(l), l)).collect();
    let is_dissent = |l: &Latest| l.build.agreement.as_deref() == Some("disputed");
    let first_build = |pred: &dyn Fn(&Status) -> bool| states.iter().find(|(s, _)| pred(s)).map(|(_, l)| l.build.id);
    let dissenters: Vec<&str> = states.iter().filter(|(_, l)| is_dissent(l)).map(|(_, l)| l.builder.as_str()).collect();
    // Disputed: a request says so, or a builder's build was disputed and no agreement settled it.
    if verdict("disputed") || (!dissenters.is_empty() && !verdict("agreed")) {
        let who = if dissenters.is_empty() { String::new() } else { format!(" ({})", dissenters.join(", ")) };
        let asked = if open { "; another builder is asked" } else { "" };
        return Some(status(
            "error",
            format!("disputed: builders disagree on this revision{who}{asked}"),
            states
                .iter()
                .find(|(_, l)| is_dissent(l))
                .map(|(_, l)| l.build.id)
                .or_else(|| latest.first().map(|l| l.build.id)),
        ));
    }
    // From here, dissenters were outvoted: their word is not counted.
    let counted: Vec<&(Status, &Latest)> = states.iter().filter(|(_, l)| !is_dissent(l)).collect();
    let names = |pred: &dyn Fn(&Status) -> bool| {
        counted.iter().filter(|(s, _)| pred(s)).map(|(_, l)| l.builder.as_str()).collect::<Vec<_>>()
    };
    let running = names(&|s| s.state == "running" || s.state == "pending");
    if open || !running.is_empty() {
        let done = counted.len() - running.len();
        let mut parts = Vec::new();
        if done > 0 {
            parts.push(format!("{done} done"));
        }
        if !running.is_empty() {
            parts.push(format!("building on {}", running.join(", ")));
        }
        if open {
            parts.push("waiting for builders".to_owned());
        }
        return Some(status("pending", parts.join(", "), first_build(&|s| s.state == "running")));
    }
    let any_decisive = counted.iter().any(|(s, _)| decisive(s.state));
    let judged: Vec<&&(Status, &Latest)> = counted.iter().filter(|(s, _)| !any_decisive || decisive(s.state)).collect();
    let Some(worst) = judged.iter().map(|(s, _)| s.state).max_by_key(|s| badness(s)) else {
        // Requests, all ended, and no build: nobody answered.
        let ended = requests.first().map(|(id, ..)| *id).unwrap_or_default();
        return Some(status("error", format!("no builds: request {ended} ended without any"), None));
    };
    let by_worst: Vec<&str> =
        judged.iter().filter(|(s, _)| s.state == worst).map(|(_, l)| l.builder.as_str()).collect();
    let total = judged.len();
    let of_total = if total == 1 { String::new() } else { format!(" ({} of {total} builders)", by_worst.len()) };
    let mut description = match worst {
        "success" => format!("success on {total} builder{}", if total == 1 { "" } else { "s" }),
        "failure" => format!("failed on {}{of_total}", by_worst.join(", ")),
        "error" => format!("error on {}{of_total}", by_worst.join(", ")),
        _ => format!("cancelled on {}{of_total}", by_worst.join(", ")),
    };
    // What was left out, and why: a reader of the pull request sees every builder accounted for.
    let mut aside: Vec<String> = counted
        .iter()
        .filter(|(s, _)| any_decisive && !decisive(s.state))
        .map(|(s, l)| format!("{} {}", l.builder, if s.state == "cancelled" { "cancelled" } else { "could not build" }))
        .collect();
    aside.extend(dissenters.iter().map(|b| format!("{b} outvoted")));
    if !aside.is_empty() {
        description.push_str("; not counted: ");
        description.push_str(&aside.join(", "));
    }
    let at = judged.iter().find(|(s, _)| s.state == worst).map(|(_, l)| l.build.id);
    Some(status(worst, description, at))
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
