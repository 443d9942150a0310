//! Commit statuses on GitHub, GitLab and Gitea/Forgejo (DESIGN "Where projects already look").
//!
//! Recording: whenever something about a revision changes — a request names it, a build of it
//! starts, finishes or is lost, an answer makes it disputed, a request for it ends — [`sync`]
//! works out each builder's status and the summary (`results::revision`) and records, as a
//! `status` notification with a delivery per forge, each one that differs from the last said
//! in its context. It runs in the transaction that made the change, so a status is queued
//! exactly when the change is stored; the queue then sends them in order, retried, once across
//! server processes. A context takes at most 1,000 statuses per revision (GitHub's limit); then
//! only the summary changes.
//!
//! Sending: [`post`] puts a status in the forge's words and answers whether to retry.

use std::time::Duration;

use chrono::NaiveDateTime;
use diesel::prelude::*;
use serde::{Deserialize, Serialize};

use super::Facts;
use crate::db::models::{NewNotification, Subscription};
use crate::db::schema::{notifications, projects};
use crate::db::{DbConn, notify};
use crate::results::revision::{self, Status};

/// The notification event of a commit status.
pub const STATUS: &str = "status";

/// Statuses one context may take per revision: GitHub refuses the 1,001st.
pub const PER_CONTEXT: i64 = 1_000;

/// A commit status as recorded: its revision, whose it is, and what it says.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusFacts {
    pub revision: String,
    /// None for the revision's summary.
    pub builder: Option<String>,
    /// Forge-neutral: `pending`, `running`, `success`, `failure`, `error`, `cancelled`.
    pub state: String,
    pub description: String,
    /// The build it links to; none links to the project's requests page.
    pub build_id: Option<i64>,
}

/// Records the statuses that changed for a revision of a project, if the project posts to a
/// forge and the revision is a full commit id. Call it in the transaction that changed it.
pub fn sync(conn: &mut DbConn, project_id: i64, revision: &str, now: NaiveDateTime) -> QueryResult<()> {
    if !revision::is_commit(revision) || !notify::has_forges(conn, project_id)? {
        return Ok(());
    }
    // Two processes storing reports of one revision at once must not each judge it without the
    // other's build (the later summary would miss one): on PostgreSQL they take turns per
    // revision; SQLite's write lock already makes them.
    if let DbConn::Pg(pg) = conn {
        let key = lock_key(project_id, revision);
        diesel::sql_query("SELECT pg_advisory_xact_lock($1)").bind::<diesel::sql_types::BigInt, _>(key).execute(pg)?;
    }
    let project: String = projects::table.find(project_id).select(projects::name).first(conn)?;
    let latest = revision::latest(conn, project_id, revision)?;
    for l in &latest {
        let status = revision::of_builder(l);
        say(conn, (project_id, &project), revision, Some((l.build.builder_id, &l.builder)), &status, now)?;
    }
    if let Some(summary) = revision::summary(conn, project_id, revision, &latest)? {
        say(conn, (project_id, &project), revision, None, &summary, now)?;
    }
    Ok(())
}

/// The advisory lock of one revision of one project (64 bits of its SHA-256).
fn lock_key(project_id: i64, revision: &str) -> i64 {
    let digest = openssl::sha::sha256(format!("tbox-status/{project_id}/{revision}").as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    i64::from_le_bytes(first)
}

/// Records one status unless its context says the same already, or is full.
fn say(
    conn: &mut DbConn,
    (project_id, project): (i64, &str),
    revision: &str,
    builder: Option<(i64, &str)>,
    status: &Status,
    now: NaiveDateTime,
) -> QueryResult<()> {
    let builder_id = builder.map(|(id, _)| id);
    let in_context = || {
        let q = notifications::table
            .filter(notifications::project_id.eq(project_id))
            .filter(notifications::event.eq(STATUS))
            .filter(notifications::revision.eq(revision))
            .into_boxed();
        match builder_id {
            Some(id) => q.filter(notifications::builder_id.eq(id)),
            None => q.filter(notifications::builder_id.is_null()),
        }
    };
    let last: Option<String> =
        in_context().order(notifications::id.desc()).select(notifications::facts).first(conn).optional()?;
    let facts = StatusFacts {
        revision: revision.to_owned(),
        builder: builder.map(|(_, name)| name.to_owned()),
        state: status.state.to_owned(),
        description: status.description.clone(),
        build_id: status.build_id,
    };
    let said = last.and_then(|f| serde_json::from_str::<Facts>(&f).ok()).and_then(|f| f.status);
    if said.as_ref().is_some_and(|s| s.state == facts.state && s.description == facts.description) {
        return Ok(());
    }
    let n: i64 = in_context().count().get_result(conn)?;
    if n >= PER_CONTEXT {
        return Ok(());
    }
    let key = format!("status/{revision}/{}/{n}", builder_id.map_or_else(|| "summary".to_owned(), |id| id.to_string()));
    let json = serde_json::to_string(&Facts {
        project: project.to_owned(),
        builder: builder.map(|(_, name)| name.to_owned()).unwrap_or_default(),
        new_status: facts.state.clone(),
        status: Some(facts),
        ..Facts::default()
    })
    .map_err(|e| diesel::result::Error::SerializationError(Box::new(e)))?;
    notify::record(
        conn,
        &NewNotification {
            project_id,
            event_key: &key,
            event: STATUS,
            builder_id,
            branch: None,
            build_id: status.build_id,
            facts: &json,
            created_at: now,
            revision: Some(revision),
        },
    )
    .map(drop)
}

/// How an attempt went wrong, and what to do about it.
#[derive(Debug)]
pub struct Failure {
    /// What the log shows.
    pub answer: String,
    /// The forge asked to wait this long (rate limits): no earlier retry.
    pub retry_after: Option<Duration>,
    /// A client error retrying cannot mend (422, 401, 404): given up at once.
    pub permanent: bool,
}

impl Failure {
    pub fn transient(answer: String) -> Self {
        Failure { answer, retry_after: None, permanent: false }
    }
}

/// The context a status is posted under: the subscription's, then `/builder` for a builder's.
pub fn context(s: &Subscription, f: &StatusFacts) -> String {
    let base = s.context.as_deref().unwrap_or("tbox");
    match &f.builder {
        Some(b) => format!("{base}/{b}"),
        None => base.to_owned(),
    }
}

/// Where a status links to: its build, or the project's requests.
pub fn target_url(base: &str, project: &str, f: &StatusFacts) -> String {
    match f.build_id {
        Some(id) => format!("{base}/builds/{id}"),
        None => format!("{base}/projects/{}/requests", crate::web::waterfall::urlencode(project)),
    }
}

/// The request a forge takes: its URL, its auth header, and its JSON body.
pub fn request(
    s: &Subscription,
    base: &str,
    project: &str,
    f: &StatusFacts,
) -> Result<(String, (&'static str, String), serde_json::Value), String> {
    let api = s.target.trim_end_matches('/');
    let repo = s.repo.as_deref().ok_or("the forge subscription has no repository")?;
    let token = s.secret.as_deref().ok_or("the forge subscription has no token")?;
    let target_url = target_url(base, project, f);
    let context = context(s, f);
    match s.forge.as_deref() {
        Some(kind @ ("github" | "gitea")) => {
            // Neither knows `running` or `cancelled`.
            let state = match f.state.as_str() {
                "running" => "pending",
                "cancelled" => "error",
                other => other,
            };
            let auth = if kind == "github" {
                ("Authorization", format!("Bearer {token}"))
            } else {
                ("Authorization", format!("token {token}"))
            };
            Ok((
                format!("{api}/repos/{repo}/statuses/{}", f.revision),
                auth,
                serde_json::json!({"state": state, "target_url": target_url, "description": f.description, "context": context}),
            ))
        }
        Some("gitlab") => {
            let state = match f.state.as_str() {
                "failure" | "error" => "failed",
                "cancelled" => "canceled",
                other => other,
            };
            // A project path goes in one segment, its slashes encoded (GitLab's `:id`).
            let id = crate::web::waterfall::urlencode(repo);
            Ok((
                format!("{api}/projects/{id}/statuses/{}", f.revision),
                ("PRIVATE-TOKEN", token.to_owned()),
                serde_json::json!({"state": state, "name": context, "target_url": target_url, "description": f.description}),
            ))
        }
        other => Err(format!("unknown forge {other:?}")),
    }
}

/// The longest wait a forge's rate limit is taken at its word for.
const LONGEST_WAIT: Duration = Duration::from_secs(3600);

/// Posts one status; the answer on success.
pub fn post(
    agent: &ureq::Agent,
    s: &Subscription,
    base: &str,
    project: &str,
    f: &StatusFacts,
) -> Result<String, Failure> {
    let (url, (header, value), body) =
        request(s, base, project, f).map_err(|e| Failure { answer: e, retry_after: None, permanent: true })?;
    let github = s.forge.as_deref() == Some("github");
    let mut req = agent
        .post(&url)
        .header("Content-Type", "application/json")
        .header("Accept", if github { "application/vnd.github+json" } else { "application/json" })
        .header(header, value);
    if github {
        req = req.header("X-GitHub-Api-Version", "2022-11-28");
    }
    let mut resp = req.send(body.to_string()).map_err(|e| {
        Failure::transient(match e {
            ureq::Error::Timeout(_) => "no answer in time".to_owned(),
            e => e.to_string(),
        })
    })?;
    let status = resp.status().as_u16();
    let header = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let (retry_after, remaining, reset) =
        (header("retry-after"), header("x-ratelimit-remaining"), header("x-ratelimit-reset"));
    let text = resp.body_mut().with_config().limit(super::send::ANSWER_BYTES).read_to_string().unwrap_or_default();
    let text: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let answer = format!("HTTP {status}{}", if text.is_empty() { String::new() } else { format!(": {text}") });
    if (200..300).contains(&status) {
        return Ok(answer);
    }
    // GitLab refuses to "move" a status to the state it is in (a new description, same state):
    // what it shows is what we meant.
    if status == 400 && text.contains("Cannot transition status") {
        return Ok(format!("{answer} (already in that state)"));
    }
    let wait = rate_limit_wait(status, retry_after.as_deref(), remaining.as_deref(), reset.as_deref());
    if let Some(wait) = wait {
        return Err(Failure {
            answer: format!("{answer} (rate limited: waiting {} s)", wait.as_secs()),
            retry_after: Some(wait),
            permanent: false,
        });
    }
    // A redirect is not followed (the token would go where the answer says): the API has moved
    // or --api is wrong, which retrying for a day does not mend.
    if (300..400).contains(&status) {
        return Err(Failure {
            answer: format!("{answer} (a redirect: not followed; check the forge's --api)"),
            retry_after: None,
            permanent: true,
        });
    }
    let permanent = (400..500).contains(&status) && status != 408;
    Err(Failure {
        answer: if permanent { format!("{answer} (a client error: not retried)") } else { answer },
        retry_after: None,
        permanent,
    })
}

/// How long a forge asked to wait, if this answer is a rate limit: `Retry-After` on a 403 or
/// 429, or GitHub's `X-RateLimit-Remaining: 0` with the reset time; a secondary limit without
/// either means at least a minute (GitHub's documentation).
fn rate_limit_wait(
    status: u16,
    retry_after: Option<&str>,
    remaining: Option<&str>,
    reset: Option<&str>,
) -> Option<Duration> {
    if !matches!(status, 403 | 429) {
        return None;
    }
    if let Some(secs) = retry_after.and_then(|s| s.trim().parse::<u64>().ok()) {
        return Some(Duration::from_secs(secs.max(1)).min(LONGEST_WAIT));
    }
    if remaining.map(str::trim) == Some("0") {
        let now = chrono::Utc::now().timestamp();
        let at = reset.and_then(|r| r.trim().parse::<i64>().ok()).unwrap_or(now + 60);
        return Some(Duration::from_secs(u64::try_from(at - now).unwrap_or(0).max(1)).min(LONGEST_WAIT));
    }
    (status == 429).then_some(Duration::from_secs(60))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limits_are_read_as_github_documents_them() {
        assert_eq!(rate_limit_wait(429, Some("7"), None, None), Some(Duration::from_secs(7)));
        assert_eq!(rate_limit_wait(403, Some("99999"), None, None), Some(LONGEST_WAIT));
        let soon = (chrono::Utc::now().timestamp() + 30).to_string();
        let w = rate_limit_wait(403, None, Some("0"), Some(&soon));
        assert!(w.is_some_and(|w| w <= Duration::from_secs(30) && w >= Duration::from_secs(28)), "{w:?}");
        assert_eq!(rate_limit_wait(403, None, Some("12"), None), None, "a plain 403 is a refusal");
        assert_eq!(rate_limit_wait(422, Some("5"), None, None), None);
        assert_eq!(rate_limit_wait(429, None, None, None), Some(Duration::from_secs(60)));
    }
}
