//! The JSON shapes the API answers with, converted explicitly from database rows.

use chrono::{NaiveDateTime, SecondsFormat};
use serde::Serialize;

use crate::db::builds::{Full, Listed};
use crate::db::models::Project;

/// RFC 3339, UTC, as every time in the API.
pub fn time(t: NaiveDateTime) -> String {
    t.and_utc().to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// A build in a list.
#[derive(Debug, Serialize)]
pub struct BuildSummary {
    pub id: i64,
    pub uuid: String,
    pub builder: String,
    pub branch: String,
    pub revision: String,
    /// `started`, `finished`, or `lost` (started, and no `finished` report came in time).
    pub state: String,
    /// Set once finished; null while started or lost.
    pub result: Option<String>,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub url: String,
    pub steps: Vec<StepBrief>,
    /// Its test results by outcome.
    pub tests: crate::db::builds::TestCounts,
    /// As an answer to a request asking for agreement: `pending`, `agreed` or `disputed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agreement: Option<String>,
}

/// A step in a list: just what a cell shows.
#[derive(Debug, Serialize)]
pub struct StepBrief {
    pub name: String,
    pub result: String,
}

impl BuildSummary {
    pub fn new(l: Listed, base: &str) -> Self {
        let b = l.build;
        let (state, result) = (b.shown_state().to_owned(), b.shown_result().map(str::to_owned));
        BuildSummary {
            url: format!("{base}/builds/{}", b.id),
            id: b.id,
            uuid: b.uuid,
            builder: l.builder,
            branch: b.branch,
            revision: b.revision,
            state,
            result,
            started_at: time(b.started_at),
            finished_at: b.finished_at.map(time),
            steps: l.steps.into_iter().map(|s| StepBrief { name: s.name, result: s.result }).collect(),
            tests: l.tests,
            agreement: b.agreement,
        }
    }
}

/// One build in full.
#[derive(Debug, Serialize)]
pub struct BuildDetail {
    pub id: i64,
    pub uuid: String,
    pub project: String,
    pub builder: String,
    pub branch: String,
    pub revision: String,
    /// `started`, `finished`, or `lost` (started, and no `finished` report came in time).
    pub state: String,
    /// Set once finished; null while started or lost.
    pub result: Option<String>,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub received_at: String,
    pub reporter: String,
    /// The signed recipe this build ran (absent for hand-written steps).
    pub recipe_version: Option<i64>,
    /// The fingerprint of the project key that signed that recipe.
    pub recipe_key: Option<String>,
    /// How its steps were isolated (`bubblewrap`, or `none`); absent when the reporter did not say.
    pub sandbox: Option<String>,
    pub properties: serde_json::Map<String, serde_json::Value>,
    pub url: String,
    /// A red build's failure in one line: the first error line of its first failed step.
    pub first_error: Option<crate::results::errors::FirstError>,
    pub steps: Vec<StepDetail>,
    pub tests: Vec<TestDetail>,
    /// As an answer to a request asking for agreement: `pending`, `agreed` or `disputed`.
    pub agreement: Option<String>,
    /// The files the recipe named as artifacts: `{path, sha256, size}`.
    pub artifacts: Vec<tbox_protocol::Artifact>,
}

/// A step in full.
#[derive(Debug, Serialize)]
pub struct StepDetail {
    pub name: String,
    pub kind: Option<String>,
    pub result: String,
    pub started_at: String,
    pub finished_at: String,
    pub exit_code: Option<i32>,
    pub log_url: Option<String>,
    pub log_truncated: bool,
}

/// A test result.
#[derive(Debug, Serialize)]
pub struct TestDetail {
    pub suite: String,
    pub name: String,
    pub result: String,
    pub duration_ms: Option<i64>,
    pub message: Option<String>,
}

impl BuildDetail {
    pub fn new(f: Full, base: &str) -> Self {
        let b = f.build;
        let (state, result) = (b.shown_state().to_owned(), b.shown_result().map(str::to_owned));
        let id = b.id;
        BuildDetail {
            url: format!("{base}/builds/{id}"),
            id,
            uuid: b.uuid,
            project: f.project,
            builder: f.builder,
            branch: b.branch,
            revision: b.revision,
            state,
            result,
            started_at: time(b.started_at),
            finished_at: b.finished_at.map(time),
            received_at: time(b.received_at),
            reporter: b.reporter,
            recipe_version: b.recipe_version,
            recipe_key: b.recipe_key,
            sandbox: b.sandbox,
            agreement: b.agreement,
            artifacts: b.artifacts.as_deref().and_then(|a| serde_json::from_str(a).ok()).unwrap_or_default(),
            first_error: None,
            properties: serde_json::from_str(&b.properties).unwrap_or_default(),
            steps: f
                .steps
                .into_iter()
                .map(|s| StepDetail {
                    log_url: s.log_digest.as_ref().map(|_| format!("{base}/builds/{id}/steps/{}/log", s.position)),
                    name: s.name,
                    kind: s.kind,
                    result: s.result,
                    started_at: time(s.started_at),
                    finished_at: time(s.finished_at),
                    exit_code: s.exit_code,
                    log_truncated: s.log_truncated,
                })
                .collect(),
            tests: f
                .tests
                .into_iter()
                .map(|t| TestDetail {
                    suite: t.suite,
                    name: t.name,
                    result: t.result,
                    duration_ms: t.duration_ms,
                    message: t.message,
                })
                .collect(),
        }
    }
}

/// A project, with its builders by colour and the addresses of its feeds.
#[derive(Debug, Serialize)]
pub struct ProjectView {
    pub name: String,
    pub title: String,
    pub repo_url: Option<String>,
    pub revision_url: Option<String>,
    pub url: String,
    /// Builders by the colour of their newest build: green, red, building, lost, stale, nodata.
    pub status: StatusCounts,
    pub feeds: Feeds,
}

/// Builders by colour.
#[derive(Debug, Serialize)]
pub struct StatusCounts {
    pub green: usize,
    /// `failed` + `tests_failed` + `exception`.
    pub red: usize,
    /// The build is broken (red).
    pub failed: usize,
    /// The build works, tests fail (orange).
    pub tests_failed: usize,
    /// The reporter failed, not the code (purple).
    pub exception: usize,
    pub building: usize,
    /// Their newest build started and never finished.
    pub lost: usize,
    pub stale: usize,
    pub nodata: usize,
    /// Their newest build's answer is disputed by other builders (neither green nor red).
    pub disputed: usize,
}

/// Where a project's feeds are.
#[derive(Debug, Serialize)]
pub struct Feeds {
    pub builds: String,
    pub status: String,
    pub atom: String,
    pub badge: String,
    pub shields: String,
    pub cctray: String,
}

impl ProjectView {
    pub fn new(p: Project, base: &str, counts: std::collections::BTreeMap<&'static str, usize>) -> Self {
        let n = &p.name;
        let c = |k: &str| counts.get(k).copied().unwrap_or(0);
        ProjectView {
            url: format!("{base}/projects/{n}"),
            status: StatusCounts {
                green: c("green"),
                red: c("red"),
                failed: c("failed"),
                tests_failed: c("tests_failed"),
                exception: c("exception"),
                building: c("building"),
                lost: c("lost"),
                stale: c("stale"),
                nodata: c("nodata"),
                disputed: c("disputed"),
            },
            feeds: Feeds {
                builds: format!("{base}/api/v1/projects/{n}/builds"),
                status: format!("{base}/api/v1/projects/{n}/status"),
                atom: format!("{base}/projects/{n}/feed.atom"),
                badge: format!("{base}/projects/{n}/badge.svg"),
                shields: format!("{base}/api/v1/projects/{n}/shields.json"),
                cctray: format!("{base}/projects/{n}/cctray.xml"),
            },
            name: p.name,
            title: p.title,
            repo_url: p.repo_url,
            revision_url: p.revision_url,
        }
    }
}
