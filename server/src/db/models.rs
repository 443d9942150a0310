//! Database rows. These are not wire types: `api/` converts them to the JSON it answers.

use chrono::NaiveDateTime;
use diesel::prelude::*;

use super::schema::*;

/// A project that builders report for.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = projects)]
pub struct Project {
    pub id: i64,
    pub name: String,
    pub title: String,
    pub repo_url: Option<String>,
    pub revision_url: Option<String>,
    pub created_at: NaiveDateTime,
    pub compare_url: Option<String>,
}

#[derive(Debug, Insertable)]
#[diesel(table_name = projects)]
pub struct NewProject<'a> {
    pub name: &'a str,
    pub title: &'a str,
    pub repo_url: Option<&'a str>,
    pub revision_url: Option<&'a str>,
    pub created_at: NaiveDateTime,
    pub compare_url: Option<&'a str>,
}

/// A volunteer machine.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = builders)]
pub struct Builder {
    pub id: i64,
    pub name: String,
    pub status: String,
    pub owner: Option<String>,
    pub description: Option<String>,
    pub properties: String,
    pub created_at: NaiveDateTime,
    pub last_report_at: Option<NaiveDateTime>,
    /// Its agreement record (all projects): answers that matched a verdict, and that did not.
    pub agreed: i64,
    pub disputed: i64,
}

#[derive(Debug, Insertable)]
#[diesel(table_name = builders)]
pub struct NewBuilder<'a> {
    pub name: &'a str,
    pub status: &'a str,
    pub owner: Option<&'a str>,
    pub description: Option<&'a str>,
    pub properties: &'a str,
    pub created_at: NaiveDateTime,
}

/// One of a builder's public keys.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = builder_keys)]
pub struct BuilderKey {
    pub id: i64,
    pub builder_id: i64,
    pub fingerprint: String,
    pub public_key: String,
    pub created_at: NaiveDateTime,
    pub revoked_at: Option<NaiveDateTime>,
}

#[derive(Debug, Insertable)]
#[diesel(table_name = builder_keys)]
pub struct NewBuilderKey<'a> {
    pub builder_id: i64,
    pub fingerprint: &'a str,
    pub public_key: &'a str,
    pub created_at: NaiveDateTime,
}

/// A build: one (builder, uuid).
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = builds)]
pub struct Build {
    pub id: i64,
    pub project_id: i64,
    pub builder_id: i64,
    pub uuid: String,
    pub branch: String,
    pub revision: String,
    pub state: String,
    pub result: Option<String>,
    pub started_at: NaiveDateTime,
    pub finished_at: Option<NaiveDateTime>,
    pub reporter: String,
    pub properties: String,
    pub received_at: NaiveDateTime,
    pub recipe_version: Option<i64>,
    pub recipe_key: Option<String>,
    pub sandbox: Option<String>,
    /// As an answer to a request asking for agreement: `pending`, `agreed` or `disputed`.
    pub agreement: Option<String>,
    /// JSON list of `{path, sha256, size}`, as reported.
    pub artifacts: Option<String>,
}

/// The columns a report sets on a build (insert, or update when `finished` completes it).
#[derive(Debug, Insertable, AsChangeset)]
#[diesel(table_name = builds, treat_none_as_null = true)]
pub struct BuildFields<'a> {
    pub project_id: i64,
    pub builder_id: i64,
    pub uuid: &'a str,
    pub branch: &'a str,
    pub revision: &'a str,
    pub state: &'a str,
    pub result: Option<&'a str>,
    pub started_at: NaiveDateTime,
    pub finished_at: Option<NaiveDateTime>,
    pub reporter: &'a str,
    pub properties: &'a str,
    pub received_at: NaiveDateTime,
    pub recipe_version: Option<i64>,
    pub recipe_key: Option<&'a str>,
    pub sandbox: Option<&'a str>,
    pub artifacts: Option<&'a str>,
}

/// One step of a build.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = steps)]
pub struct Step {
    pub id: i64,
    pub build_id: i64,
    pub position: i32,
    pub name: String,
    pub kind: Option<String>,
    pub result: String,
    pub started_at: NaiveDateTime,
    pub finished_at: NaiveDateTime,
    pub exit_code: Option<i32>,
    pub log_digest: Option<String>,
    pub log_truncated: bool,
}

#[derive(Debug, Insertable)]
#[diesel(table_name = steps)]
pub struct NewStep<'a> {
    pub build_id: i64,
    pub position: i32,
    pub name: &'a str,
    pub kind: Option<&'a str>,
    pub result: &'a str,
    pub started_at: NaiveDateTime,
    pub finished_at: NaiveDateTime,
    pub exit_code: Option<i32>,
    pub log_digest: Option<&'a str>,
    pub log_truncated: bool,
}

/// A stored log, compressed.
#[derive(Debug, Insertable)]
#[diesel(table_name = logs)]
pub struct NewLog<'a> {
    pub digest: &'a str,
    pub size: i64,
    pub compressed: &'a [u8],
}

/// One test case's result.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = test_results)]
pub struct TestRow {
    pub id: i64,
    pub build_id: i64,
    pub suite: String,
    pub name: String,
    pub result: String,
    pub duration_ms: Option<i64>,
    pub message: Option<String>,
    pub since_build_id: Option<i64>,
    pub flaky: bool,
}

#[derive(Debug, Insertable)]
#[diesel(table_name = test_results)]
pub struct NewTest<'a> {
    pub build_id: i64,
    pub suite: &'a str,
    pub name: &'a str,
    pub result: &'a str,
    pub duration_ms: Option<i64>,
    pub message: Option<&'a str>,
    /// For a failure: the first build of its builder and branch in this run of failures.
    pub since_build_id: Option<i64>,
    /// For a failure: flaky on its builder (`results::tests`).
    pub flaky: bool,
    /// The test's recent outcomes on its builder and branch (`results::tests::History`).
    pub history: Option<i64>,
}

/// A key allowed to sign a project's recipes.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = project_keys)]
pub struct ProjectKey {
    pub id: i64,
    pub project_id: i64,
    pub fingerprint: String,
    pub public_key: String,
    pub created_at: NaiveDateTime,
    pub revoked_at: Option<NaiveDateTime>,
}

#[derive(Debug, Insertable)]
#[diesel(table_name = project_keys)]
pub struct NewProjectKey<'a> {
    pub project_id: i64,
    pub fingerprint: &'a str,
    pub public_key: &'a str,
    pub created_at: NaiveDateTime,
}

/// One published recipe, its exact bytes and signature.
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = recipes)]
pub struct RecipeRow {
    #[diesel(skip_insertion)]
    pub id: i64,
    pub project_id: i64,
    pub version: i64,
    pub body: Vec<u8>,
    pub signature: String,
    pub digest: String,
    pub key_fingerprint: String,
    pub expires_at: NaiveDateTime,
    pub published_at: NaiveDateTime,
}

/// One published key list (`tbox-keys/1`), its exact bytes and signature.
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = key_lists)]
pub struct KeyListRow {
    #[diesel(skip_insertion)]
    pub id: i64,
    pub project_id: i64,
    pub version: i64,
    pub body: Vec<u8>,
    pub signature: String,
    pub digest: String,
    pub key_fingerprint: String,
    pub expires_at: NaiveDateTime,
    pub published_at: NaiveDateTime,
}

/// A capability name a project's recipes may require.
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = project_capabilities)]
pub struct Capability {
    pub project_id: i64,
    pub name: String,
    pub description: String,
}

/// A build a project asked for.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = build_requests)]
pub struct BuildRequest {
    pub id: i64,
    pub project_id: i64,
    pub branch: String,
    pub revision: Option<String>,
    pub builders: i32,
    pub requires: String,
    pub deadline: Option<NaiveDateTime>,
    pub state: String,
    pub reason: Option<String>,
    pub digest: Option<String>,
    pub body: Option<String>,
    pub signature: Option<String>,
    pub requested_by: String,
    pub created_at: NaiveDateTime,
    pub closed_at: Option<NaiveDateTime>,
    /// How many answers from distinct owners (or builders) must agree; none: no agreement
    /// asked (unless spot-checked).
    pub quorum: Option<i32>,
    /// `owner` or `builder`: what counts as distinct for the quorum.
    pub distinct_by: String,
    /// Slots opened by disputes (and a spot check), on top of `builders`.
    pub extra_slots: i32,
    /// Given a second slot by `serve --spot-check`: judged as with quorum 2.
    pub spot_check: bool,
    /// `pending`, `agreed`, `disputed` or `inconclusive`; none without a quorum.
    pub verdict: Option<String>,
}

#[derive(Debug, Insertable)]
#[diesel(table_name = build_requests)]
pub struct NewBuildRequest<'a> {
    pub project_id: i64,
    pub branch: &'a str,
    pub revision: Option<&'a str>,
    pub builders: i32,
    pub requires: &'a str,
    pub deadline: Option<NaiveDateTime>,
    pub state: &'a str,
    pub digest: Option<&'a str>,
    pub body: Option<&'a str>,
    pub signature: Option<&'a str>,
    pub requested_by: &'a str,
    pub created_at: NaiveDateTime,
    pub quorum: Option<i32>,
    pub distinct_by: &'a str,
    pub verdict: Option<&'a str>,
}

/// One builder's attempt at a request.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = leases)]
pub struct Lease {
    pub id: i64,
    pub request_id: i64,
    pub builder_id: i64,
    pub state: String,
    pub granted_at: NaiveDateTime,
    pub expires_at: NaiveDateTime,
    pub build_id: Option<i64>,
    pub ended_at: Option<NaiveDateTime>,
    /// Why its builder declined it (state `declined`).
    pub reason: Option<String>,
    /// Whether its answer matched the request's verdict, once there is one.
    pub agrees: Option<bool>,
}

/// Someone told about a project's status changes: a webhook, an e-mail address, or a forge
/// told of commit statuses.
#[derive(Clone, Queryable, Selectable)]
#[diesel(table_name = subscriptions)]
pub struct Subscription {
    pub id: i64,
    pub project_id: i64,
    pub builder_id: Option<i64>,
    pub branch: Option<String>,
    /// `webhook`, `email` or `forge`.
    pub kind: String,
    /// The webhook's URL, the e-mail address, or the forge's API URL.
    pub target: String,
    /// The webhook's HMAC secret or the forge's token: never printed (see `Debug`).
    pub secret: Option<String>,
    pub created_at: NaiveDateTime,
    pub failing_since: Option<NaiveDateTime>,
    /// The operator allowed this webhook to reach a private or loopback address.
    pub allow_private: bool,
    /// For a forge: `github`, `gitlab` or `gitea`.
    pub forge: Option<String>,
    /// For a forge: the repository, `OWNER/NAME` (or GitLab's numeric id).
    pub repo: Option<String>,
    /// For a forge: the summary's context; a builder's is `{context}/{builder}`.
    pub context: Option<String>,
}

/// Everything but the secret, which must not reach a log by way of `{:?}`.
impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("id", &self.id)
            .field("project_id", &self.project_id)
            .field("kind", &self.kind)
            .field("target", &self.target)
            .field("secret", &self.secret.as_ref().map(|_| "(hidden)"))
            .field("forge", &self.forge)
            .field("repo", &self.repo)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Insertable)]
#[diesel(table_name = subscriptions)]
pub struct NewSubscription<'a> {
    pub project_id: i64,
    pub builder_id: Option<i64>,
    pub branch: Option<&'a str>,
    pub kind: &'a str,
    pub target: &'a str,
    pub secret: Option<&'a str>,
    pub created_at: NaiveDateTime,
    pub allow_private: bool,
    pub forge: Option<&'a str>,
    pub repo: Option<&'a str>,
    pub context: Option<&'a str>,
}

/// A status change, recorded once.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = notifications)]
pub struct Notification {
    pub id: i64,
    pub project_id: i64,
    pub event_key: String,
    pub event: String,
    /// None only for a revision's summary status.
    pub builder_id: Option<i64>,
    pub branch: Option<String>,
    pub build_id: Option<i64>,
    pub facts: String,
    pub created_at: NaiveDateTime,
    /// For `status`: the revision it is of.
    pub revision: Option<String>,
}

#[derive(Debug, Insertable)]
#[diesel(table_name = notifications)]
pub struct NewNotification<'a> {
    pub project_id: i64,
    pub event_key: &'a str,
    pub event: &'a str,
    pub builder_id: Option<i64>,
    pub branch: Option<&'a str>,
    pub build_id: Option<i64>,
    pub facts: &'a str,
    pub created_at: NaiveDateTime,
    pub revision: Option<&'a str>,
}

/// One notification to one subscriber, and how sending it went.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = deliveries)]
pub struct Delivery {
    pub id: i64,
    pub notification_id: i64,
    pub subscription_id: i64,
    pub uid: String,
    /// `pending`, `delivered` or `failed` (given up after a day).
    pub state: String,
    pub attempts: i32,
    pub next_attempt_at: NaiveDateTime,
    pub last_attempt_at: Option<NaiveDateTime>,
    pub last_answer: Option<String>,
    pub created_at: NaiveDateTime,
    pub done_at: Option<NaiveDateTime>,
}
