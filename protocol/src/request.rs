//! Build requests as a project signs them (`POST /api/v1/projects/{p}/requests`).
//!
//! The server hands the signed bytes to the builders it leases a request to, and each builder
//! checks them itself: a key it trusts signed them, they are for the project it builds, fresh
//! (not older than [`MAX_REQUEST_AGE_DAYS`], not past their deadline) and for a branch the
//! project's recipe allows. A copied old request, or one made for another project that shares
//! the key, then decides nothing.

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::names::{BranchName, Revision};
use crate::validate::{ValidationError, name};

/// A request older than this is refused by volunteers (and by the server).
pub const MAX_REQUEST_AGE_DAYS: i64 = 30;

/// How far a request's `created_at` may be ahead of the reader's clock.
const CLOCK_SKEW: TimeDelta = TimeDelta::minutes(5);

/// Most builders one request may ask for.
pub const MAX_REQUEST_BUILDERS: u32 = 100;

/// A build request, parsed from the bytes its project signed. Unknown fields are ignored, so
/// that later versions can add some.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct BuildRequest {
    /// The project it is for.
    pub project: String,
    /// When the project made it (the signer's clock).
    pub created_at: DateTime<Utc>,
    /// The branch to build.
    pub branch: BranchName,
    /// A commit of that branch; without one, builders build the branch's head.
    #[serde(default)]
    pub revision: Option<Revision>,
    /// How many distinct builders should build it.
    #[serde(default = "one")]
    pub builders: u32,
    /// Capabilities a builder must have.
    #[serde(default)]
    pub requires: Vec<String>,
    /// Builders may take it until then.
    #[serde(default)]
    pub deadline: Option<DateTime<Utc>>,
    /// Makes each request's bytes unique, so a retry of the same body is the same request.
    #[serde(default)]
    pub nonce: Option<String>,
    /// How many finished builds from distinct owners (or builders) must agree (same result,
    /// same failing tests, same artifact digests) for the revision to be *agreed*.
    #[serde(default)]
    pub quorum: Option<u32>,
    /// What counts as distinct for the quorum.
    #[serde(default)]
    pub distinct: Distinct,
}

/// What the answers making a quorum must come from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Distinct {
    /// Distinct owners: one volunteer's machines count once (a builder without an owner is its
    /// own owner).
    #[default]
    Owner,
    /// Distinct builders.
    Builder,
}

impl Distinct {
    /// The word in requests and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Distinct::Owner => "owner",
            Distinct::Builder => "builder",
        }
    }
}

fn one() -> u32 {
    1
}

/// Why a signed request is not obeyed.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum RequestError {
    /// Not JSON of the right shape (the message names the field).
    #[error("the build request is not valid: {0}")]
    Malformed(String),
    /// Well-formed, but breaks a rule.
    #[error("the build request is invalid: {0}")]
    Invalid(ValidationError),
    /// Made for another project (which may share the key).
    #[error("the build request is for project {found:?}, not {expected:?}")]
    WrongProject {
        /// The project being built.
        expected: String,
        /// What the request says.
        found: String,
    },
    /// Older than [`MAX_REQUEST_AGE_DAYS`].
    #[error("the build request was made at {0}, more than {MAX_REQUEST_AGE_DAYS} days ago (an old request replayed?)")]
    TooOld(DateTime<Utc>),
    /// Made in the future, by the reader's clock.
    #[error("the build request claims to be made at {0}, in the future")]
    FromTheFuture(DateTime<Utc>),
    /// Past its deadline.
    #[error("the build request's deadline {0} has passed")]
    PastDeadline(DateTime<Utc>),
}

impl From<ValidationError> for RequestError {
    fn from(e: ValidationError) -> Self {
        RequestError::Invalid(e)
    }
}

/// Parses and validates the bytes of a signed request (check the signature first).
pub fn parse_request(bytes: &[u8]) -> Result<BuildRequest, RequestError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let r: BuildRequest = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        RequestError::Malformed(if path == "." { e.inner().to_string() } else { format!("{path}: {}", e.inner()) })
    })?;
    de.end().map_err(|e| RequestError::Malformed(e.to_string()))?;
    r.validate()?;
    Ok(r)
}

impl BuildRequest {
    fn validate(&self) -> Result<(), ValidationError> {
        name("project", &self.project, 64)?;
        if !(1..=MAX_REQUEST_BUILDERS).contains(&self.builders) {
            return Err(ValidationError::new("builders", format!("must be 1 to {MAX_REQUEST_BUILDERS}")));
        }
        // Agreement takes two: a quorum of one would count a lone answer as agreed.
        if let Some(q) = self.quorum
            && !(2..=self.builders).contains(&q)
        {
            return Err(ValidationError::new("quorum", format!("must be 2 to builders ({})", self.builders)));
        }
        if self.requires.len() > 20 {
            return Err(ValidationError::new("requires", "at most 20 capabilities"));
        }
        for (i, r) in self.requires.iter().enumerate() {
            name(&format!("requires[{i}]"), r, 64)?;
        }
        if let Some(d) = self.deadline
            && d <= self.created_at
        {
            return Err(ValidationError::new("deadline", "is not after created_at"));
        }
        if self.nonce.as_ref().is_some_and(|n| n.len() > 128) {
            return Err(ValidationError::new("nonce", "at most 128 bytes"));
        }
        Ok(())
    }

    /// What a volunteer (or the server) holds a request to at `now`: its project, made at most
    /// [`MAX_REQUEST_AGE_DAYS`] ago and not in the future, not past its deadline.
    pub fn check(&self, project: &str, now: DateTime<Utc>) -> Result<(), RequestError> {
        if self.project != project {
            return Err(RequestError::WrongProject { expected: project.to_owned(), found: self.project.clone() });
        }
        if self.created_at > now + CLOCK_SKEW {
            return Err(RequestError::FromTheFuture(self.created_at));
        }
        if self.created_at < now - TimeDelta::days(MAX_REQUEST_AGE_DAYS) {
            return Err(RequestError::TooOld(self.created_at));
        }
        if let Some(d) = self.deadline
            && d <= now
        {
            return Err(RequestError::PastDeadline(d));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).map(|t| t.to_utc()).unwrap_or_default()
    }

    const GOOD: &str = r#"{"project":"demo","created_at":"2026-12-01T10:00:00Z","branch":"main",
        "revision":"9fceb02d0ae598e95dc970b74767f19372d61af8","builders":2,"requires":[],
        "deadline":"2026-12-02T10:00:00Z","nonce":"0011223344556677","later":"ignored"}"#;

    #[test]
    fn a_fresh_request_for_this_project_is_obeyed() -> Result<(), RequestError> {
        let r = parse_request(GOOD.as_bytes())?;
        assert_eq!((r.branch.as_str(), r.builders, r.quorum, r.distinct), ("main", 2, None, Distinct::Owner));
        let q = parse_request(
            GOOD.replace(r#""builders":2"#, r#""builders":2,"quorum":2,"distinct":"builder""#).as_bytes(),
        )?;
        assert_eq!((q.quorum, q.distinct), (Some(2), Distinct::Builder));
        r.check("demo", at("2026-12-01T12:00:00Z"))
    }

    #[test]
    fn old_foreign_or_late_requests_are_refused() -> Result<(), RequestError> {
        let r = parse_request(GOOD.as_bytes())?;
        assert!(matches!(r.check("other", at("2026-12-01T12:00:00Z")), Err(RequestError::WrongProject { .. })));
        assert!(matches!(r.check("demo", at("2026-12-03T00:00:00Z")), Err(RequestError::PastDeadline(_))));
        let no_deadline = parse_request(GOOD.replace(r#""deadline":"2026-12-02T10:00:00Z","#, "").as_bytes())?;
        assert_eq!(no_deadline.check("demo", at("2026-12-30T00:00:00Z")), Ok(()));
        assert!(matches!(no_deadline.check("demo", at("2027-01-01T00:00:00Z")), Err(RequestError::TooOld(_))));
        assert!(matches!(no_deadline.check("demo", at("2026-12-01T09:00:00Z")), Err(RequestError::FromTheFuture(_))));
        Ok(())
    }

    #[test]
    fn every_field_is_checked() {
        let field = |from: &str, to: &str| match parse_request(GOOD.replacen(from, to, 1).as_bytes()) {
            Err(RequestError::Malformed(m)) => m,
            Err(RequestError::Invalid(e)) => e.field,
            other => format!("accepted: {other:?}"),
        };
        assert!(field(r#""main""#, r#""--upload-pack=touch /tmp/x""#).starts_with("branch"));
        assert!(field(r#""9fceb02d0ae598e95dc970b74767f19372d61af8""#, r#""--output=x""#).starts_with("revision"));
        assert!(field(r#""project":"demo","#, "").contains("project"));
        assert!(field(r#""created_at":"2026-12-01T10:00:00Z","#, "").contains("created_at"));
        assert_eq!(field(r#""builders":2"#, r#""builders":0"#), "builders");
        assert_eq!(field(r#""builders":2"#, r#""builders":2,"quorum":3"#), "quorum");
        assert_eq!(field(r#""builders":2"#, r#""builders":2,"quorum":0"#), "quorum");
        assert_eq!(field(r#""builders":2"#, r#""builders":2,"quorum":1"#), "quorum");
        assert!(field(r#""builders":2"#, r#""builders":2,"quorum":-1"#).starts_with("quorum"));
        assert!(field(r#""builders":2"#, r#""builders":2,"distinct":"planet""#).starts_with("distinct"));
        assert_eq!(field(r#""deadline":"2026-12-02T10:00:00Z""#, r#""deadline":"2026-11-01T10:00:00Z""#), "deadline");
        assert!(matches!(parse_request(format!("{GOOD} trailing").as_bytes()), Err(RequestError::Malformed(_))));
    }
}
