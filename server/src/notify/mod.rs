//! Telling people when a builder's status changes: the Atom feed's events (broke, fixed, new
//! builder, gone stale, lost), sent to webhooks and e-mail addresses.
//!
//! A change is recorded in the database in the same transaction as what caused it (a report,
//! builds marked lost) with one delivery per subscriber concerned; `send.rs` then delivers
//! them from a thread of each server process, retrying for a day. `message.rs` says what a
//! webhook body and an e-mail look like; `forge.rs` records and posts commit statuses through
//! the same queue.

pub mod forge;
pub mod message;
pub mod send;
pub mod target;

use chrono::NaiveDateTime;
use diesel::prelude::*;
use serde::{Deserialize, Serialize};

use crate::api::views::time;
use crate::db::models::{Build, NewNotification, Project, Subscription};
use crate::db::schema::{builders, projects};
use crate::db::{DbConn, builds, notify};
use crate::results::agreement::{Answer, Event, answers};
use crate::results::verdict::{colour, of};

/// Status changes, as their feed entries and notifications name them.
pub const BROKE: &str = "broke";
pub const FIXED: &str = "fixed";
pub const NEW: &str = "new";
pub const STALE: &str = "stale";
pub const LOST: &str = "lost";
pub const DISPUTED: &str = "disputed";

/// What a notification says, stored with it when the change happens; links are added when it
/// is sent, from the sending server's public URL.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Facts {
    pub project: String,
    pub builder: String,
    /// None for a change of the whole builder (gone stale).
    pub branch: Option<String>,
    /// The status before, in the words the pages use ("success", "tests failed", …); none
    /// for a builder's first build.
    pub old_status: Option<String>,
    pub new_status: String,
    pub build: Option<BuildFacts>,
    /// The green or red build before it (what it is compared with).
    pub previous: Option<BuildFacts>,
    /// The project's link for the changes between the previous build and this one.
    pub compare_url: Option<String>,
    /// For a break: the first error line of the first failed step's log.
    pub first_error: Option<ErrorFacts>,
    /// For a break: tests that fail now and did not in the previous build (at most 20).
    #[serde(default)]
    pub new_failures: Vec<TestFacts>,
    /// For a builder gone stale: when it last reported.
    pub last_report_at: Option<String>,
    /// For a dispute: who said what.
    #[serde(default)]
    pub dispute: Option<String>,
    /// For a commit status on a forge: what it says, of which revision.
    #[serde(default)]
    pub status: Option<forge::StatusFacts>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BuildFacts {
    pub id: i64,
    pub revision: String,
    pub result: Option<String>,
    pub started_at: String,
    pub finished_at: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorFacts {
    /// The step, numbered from 1.
    pub step: i32,
    pub step_name: String,
    pub line: u64,
    pub text: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TestFacts {
    pub suite: String,
    pub name: String,
    /// Flaky by DESIGN's rule: not a new regression, but said so rather than hidden.
    pub flaky: bool,
}

fn build_facts(b: &Build) -> BuildFacts {
    BuildFacts {
        id: b.id,
        revision: b.revision.clone(),
        result: b.shown_result().map(str::to_owned),
        started_at: time(b.started_at),
        finished_at: b.finished_at.map(time),
    }
}

/// The word pages use for a build's status.
fn word(conn: &mut DbConn, b: &Build) -> QueryResult<String> {
    let kind = builds::failing_kinds(conn, &[b.id])?.remove(&b.id);
    Ok(of(b, kind.as_deref()).2.to_owned())
}

fn names(conn: &mut DbConn, b: &Build) -> QueryResult<(Project, String)> {
    let project = projects::table.find(b.project_id).select(Project::as_select()).first(conn)?;
    let builder = builders::table.find(b.builder_id).select(builders::name).first(conn)?;
    Ok((project, builder))
}

/// Which change happened, to whom: what a notification is recorded under.
struct Change<'a> {
    event: &'a str,
    /// Names the change once (e.g. `build/42/broke`), however many processes notice it.
    key: String,
    project_id: i64,
    builder_id: i64,
    branch: Option<&'a str>,
    build_id: Option<i64>,
}

impl<'a> Change<'a> {
    fn of_build(event: &'a str, key: String, b: &'a Build) -> Self {
        Change {
            event,
            key,
            project_id: b.project_id,
            builder_id: b.builder_id,
            branch: Some(&b.branch),
            build_id: Some(b.id),
        }
    }
}

/// Records a change with its facts, and queues its deliveries; returns how many.
fn record(conn: &mut DbConn, change: &Change<'_>, facts: &Facts, now: NaiveDateTime) -> QueryResult<usize> {
    let json = serde_json::to_string(facts).map_err(|e| diesel::result::Error::SerializationError(Box::new(e)))?;
    notify::record(
        conn,
        &NewNotification {
            project_id: change.project_id,
            event_key: &change.key,
            event: change.event,
            builder_id: Some(change.builder_id),
            branch: change.branch,
            build_id: change.build_id,
            facts: &json,
            created_at: now,
            revision: None,
        },
    )
}

/// After an answer to a request asking for agreement (same transaction): a new dispute, or a
/// builder with a long clean record disagreeing for the first time.
pub fn disputed(conn: &mut DbConn, events: &[Event], now: NaiveDateTime) -> QueryResult<()> {
    for event in events {
        let (Event::Disputed { request_id, build_id, .. } | Event::FirstDispute { request_id, build_id, .. }) = event;
        let Some(b) = builds::by_id(conn, *build_id)? else { continue };
        if !notify::has_subscribers(conn, b.project_id)? {
            return Ok(());
        }
        let (project, builder) = names(conn, &b)?;
        let answers: Vec<Answer> = answers(conn, &[*request_id])?.into_iter().map(|(_, a)| a).collect();
        let said = |a: &Answer| {
            let tests = if a.failing_tests.is_empty() {
                String::new()
            } else {
                format!(
                    " ({} failing: {})",
                    a.failing_tests.len(),
                    a.failing_tests.iter().take(3).cloned().collect::<Vec<_>>().join(", ")
                )
            };
            format!("{} says {}{tests}", a.builder, a.result)
        };
        let (key, dispute) = match event {
            Event::Disputed { .. } => (
                format!("request/{request_id}/disputed"),
                format!("request {request_id}: {}", answers.iter().map(said).collect::<Vec<_>>().join("; ")),
            ),
            Event::FirstDispute { agreed, .. } => (
                format!("builder/{}/first-dispute", b.builder_id),
                format!(
                    "{builder}'s first disagreement after {agreed} agreements (request {request_id}): {}",
                    answers.iter().map(said).collect::<Vec<_>>().join("; ")
                ),
            ),
        };
        let facts = Facts {
            project: project.name,
            builder,
            branch: Some(b.branch.clone()),
            new_status: "disputed".to_owned(),
            build: Some(build_facts(&b)),
            dispute: Some(dispute),
            ..Facts::default()
        };
        record(conn, &Change::of_build(DISPUTED, key, &b), &facts, now)?;
    }
    Ok(())
}

/// After a report was stored (same transaction): records the change it makes to its builder's
/// status on its branch, if any — a first build, a break or a fix. A report that arrives
/// after newer builds (flushed late from a spool) changes nothing anyone sees now.
pub fn after_report(conn: &mut DbConn, project_id: i64, build_id: i64, now: NaiveDateTime) -> QueryResult<()> {
    // One indexed look-up on every report; the rest only where somebody listens.
    if !notify::has_subscribers(conn, project_id)? {
        return Ok(());
    }
    let Some(b) = builds::by_id(conn, build_id)? else { return Ok(()) };
    if b.state != "finished" {
        return Ok(());
    }
    if !builds::earlier_finished(conn, &b)? {
        let (project, builder) = names(conn, &b)?;
        let facts = Facts {
            project: project.name,
            builder,
            branch: Some(b.branch.clone()),
            old_status: None,
            new_status: word(conn, &b)?,
            build: Some(build_facts(&b)),
            ..Facts::default()
        };
        // Keyed by builder and branch, not build: a first build is first once, whatever
        // order reports arrive in.
        let key = format!("builder/{}/new/{}", b.builder_id, b.branch);
        return record(conn, &Change::of_build(NEW, key, &b), &facts, now).map(drop);
    }
    let Some(green) = colour(&b) else { return Ok(()) };
    if builds::later_decided(conn, &b)? {
        return Ok(());
    }
    let Some(prev) = builds::previous_decided(conn, &b)? else { return Ok(()) };
    if colour(&prev) == Some(green) {
        return Ok(());
    }
    let (project, builder) = names(conn, &b)?;
    let mut facts = Facts {
        compare_url: project
            .compare_url
            .as_deref()
            .map(|t| t.replace("{from}", &prev.revision).replace("{to}", &b.revision)),
        project: project.name,
        builder,
        branch: Some(b.branch.clone()),
        old_status: Some(word(conn, &prev)?),
        new_status: word(conn, &b)?,
        build: Some(build_facts(&b)),
        previous: Some(build_facts(&prev)),
        ..Facts::default()
    };
    let event = if green { FIXED } else { BROKE };
    if !green {
        // Only for a break, which is rare: scanning a log holds the write lock meanwhile.
        let steps = builds::steps_of(conn, b.id)?;
        facts.first_error = crate::results::errors::first_error(conn, b.id, &steps)
            .map_err(|e| diesel::result::Error::QueryBuilderError(e.to_string().into()))?
            .map(|f| ErrorFacts { step: f.step, step_name: f.step_name, line: f.line, text: f.text });
        // All of both builds' failures, not a page of each: with a page, a failure the build
        // before had beyond its page would look new.
        let before: std::collections::HashSet<(String, String)> =
            builds::failed_tests(conn, prev.id, None)?.into_iter().map(|(s, n, _)| (s, n)).collect();
        for (suite, name, flaky) in builds::failed_tests(conn, b.id, None)? {
            if facts.new_failures.len() >= 20 {
                break;
            }
            if before.contains(&(suite.clone(), name.clone())) {
                continue;
            }
            facts.new_failures.push(TestFacts { suite, name, flaky });
        }
    }
    record(conn, &Change::of_build(event, format!("build/{}/{event}", b.id), &b), &facts, now).map(drop)
}

/// After builds were marked lost (same transaction): one change each, and their revisions'
/// commit statuses.
pub fn after_lost(conn: &mut DbConn, build_ids: &[i64], now: NaiveDateTime) -> QueryResult<()> {
    for id in build_ids {
        let Some(b) = builds::by_id(conn, *id)? else { continue };
        forge::sync(conn, b.project_id, &b.revision, now)?;
        if !notify::has_subscribers(conn, b.project_id)? {
            continue;
        }
        let (project, builder) = names(conn, &b)?;
        let facts = Facts {
            project: project.name,
            builder,
            branch: Some(b.branch.clone()),
            old_status: Some("building".into()),
            new_status: LOST.into(),
            build: Some(build_facts(&b)),
            ..Facts::default()
        };
        record(conn, &Change::of_build(LOST, format!("build/{}/lost", b.id), &b), &facts, now)?;
    }
    Ok(())
}

/// Records builders that went stale (nothing heard for `stale_after`) within the last day, in
/// each project somebody is told about; the change is keyed by the last report's time, so
/// every server process may look and it is still recorded once. Returns how many.
pub fn stale_builders(conn: &mut DbConn, stale_after: chrono::TimeDelta, now: NaiveDateTime) -> QueryResult<usize> {
    let mut n = 0;
    for project_id in notify::subscribed_projects(conn)? {
        let project = projects::table.find(project_id).select(Project::as_select()).first(conn)?;
        for b in crate::db::builders::for_project(conn, project_id)? {
            let Some(seen) = b.last_report_at else { continue };
            let at = seen + stale_after;
            // Gone stale, and recently: a builder silent for a year is not news today.
            if at > now || at < now - chrono::TimeDelta::days(1) {
                continue;
            }
            let facts = Facts {
                project: project.name.clone(),
                builder: b.name.clone(),
                branch: None,
                old_status: Some("reporting".into()),
                new_status: STALE.into(),
                last_report_at: Some(time(seen)),
                ..Facts::default()
            };
            let change = Change {
                event: STALE,
                key: format!("builder/{}/stale/{}", b.id, seen.and_utc().timestamp()),
                project_id,
                builder_id: b.id,
                branch: None,
                build_id: None,
            };
            n += record(conn, &change, &facts, now)?;
        }
    }
    Ok(n)
}

/// A subscription as public pages name it: a webhook by its host only (the path of a chat
/// webhook is its secret), an address by its domain only.
pub fn public_target(s: &Subscription) -> String {
    match s.kind.as_str() {
        "webhook" => {
            let host = s.target.parse::<ureq::http::Uri>().ok().and_then(|u| u.host().map(str::to_owned));
            format!("webhook #{} to {}", s.id, host.unwrap_or_else(|| "?".to_owned()))
        }
        _ => format!(
            "e-mail #{} to an address at {}",
            s.id,
            s.target.rsplit('@').next().unwrap_or("?").trim_end_matches('>')
        ),
    }
}
