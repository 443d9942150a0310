//! Parsing and validation: every rejection names the field it is about.

use chrono::{DateTime, TimeDelta, Utc};
use thiserror::Error;

use crate::report::{BuildState, FORMAT, MAX_ARTIFACTS, Report, SANDBOX_KINDS};

/// Why a body is not an acceptable report.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ParseError {
    /// The body is not JSON at all (HTTP 400).
    #[error("malformed JSON: {0}")]
    Malformed(String),
    /// The body is JSON but not a valid report (HTTP 422).
    #[error(transparent)]
    Invalid(#[from] ValidationError),
}

/// A report that is well-formed JSON but breaks a rule; `field` says where.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("{field}: {message}")]
pub struct ValidationError {
    /// A path such as `steps[2].name`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl ValidationError {
    pub(crate) fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        ValidationError { field: field.into(), message: message.into() }
    }
}

/// Size limits on a report's parts. The defaults suit real builds with room to spare.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Most steps in one report.
    pub max_steps: usize,
    /// Most test results in one report.
    pub max_tests: usize,
    /// Most properties.
    pub max_properties: usize,
    /// Longest single log, in bytes.
    pub max_log_bytes: usize,
    /// Longest test message, in bytes.
    pub max_message_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_steps: 200,
            max_tests: 100_000,
            max_properties: 100,
            max_log_bytes: 32 << 20,
            max_message_bytes: 64 << 10,
        }
    }
}

/// How far in the future a `finished_at` may lie (clock skew between volunteer and server).
const MAX_FUTURE: TimeDelta = TimeDelta::minutes(5);

/// Parses and validates a report body with the default [`Limits`].
///
/// `now` is the receiver's clock, used to refuse reports from the future.
pub fn parse_report(body: &[u8], now: DateTime<Utc>) -> Result<Report, ParseError> {
    parse_report_with(body, now, &Limits::default())
}

/// Parses and validates a report body.
pub fn parse_report_with(body: &[u8], now: DateTime<Utc>, limits: &Limits) -> Result<Report, ParseError> {
    // Plain serde_json first: tracking the path of every field costs as much again as the parse
    // itself, and nearly every body is well formed. Only a body that fails is read a second
    // time, with the path tracked, to name the field in the error.
    let report: Report = match serde_json::from_slice(body) {
        Ok(report) => report,
        Err(_) => return Err(explain(body)),
    };
    validate(&report, now, limits)?;
    Ok(report)
}

/// Why `body` is not a report: the field at fault, or the JSON error.
fn explain(body: &[u8]) -> ParseError {
    let mut de = serde_json::Deserializer::from_slice(body);
    let parsed: Result<Report, _> = serde_path_to_error::deserialize(&mut de);
    match parsed {
        Err(e) => {
            let path = e.path().to_string();
            let inner = e.into_inner();
            match inner.classify() {
                serde_json::error::Category::Data => {
                    let field = if path == "." { "report".to_owned() } else { path };
                    ParseError::Invalid(ValidationError::new(field, strip_position(&inner.to_string())))
                }
                _ => ParseError::Malformed(inner.to_string()),
            }
        }
        // The signed body is one JSON document and nothing else: bytes after it would be signed
        // but never shown, a place to smuggle data past a reader of the report.
        Ok(_) => ParseError::Malformed("the body goes on after the report's closing brace".to_owned()),
    }
}

/// serde_json appends " at line 1 column 42"; the field path already says where.
fn strip_position(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_owned(),
        None => msg.to_owned(),
    }
}

/// Checks the rules that types alone cannot express.
pub fn validate(r: &Report, now: DateTime<Utc>, limits: &Limits) -> Result<(), ValidationError> {
    if r.format != FORMAT {
        return Err(ValidationError::new("format", format!("must be \"{FORMAT}\", got {:?}", r.format)));
    }
    name("uuid", &r.uuid, 128)?;
    name("project", &r.project, 64)?;
    name("builder", &r.builder, 64)?;
    text("branch", &r.branch, 1, 200)?;
    token("revision", &r.revision, 200)?;
    text("reporter", &r.reporter, 0, 200)?;
    if let Some(v) = r.recipe_version
        && (v == 0 || i64::try_from(v).is_err())
    {
        return Err(ValidationError::new("recipe_version", "must be a recipe version (1 or more)"));
    }
    if let Some(k) = &r.recipe_key {
        let hex = k.strip_prefix("SHA256:").unwrap_or("");
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(ValidationError::new("recipe_key", "must be a key fingerprint, SHA256: and 64 hex digits"));
        }
    }
    if let Some(s) = &r.sandbox
        && !SANDBOX_KINDS.contains(&s.as_str())
    {
        return Err(ValidationError::new("sandbox", format!("must be one of {}, got {s:?}", SANDBOX_KINDS.join(", "))));
    }
    if r.artifacts.len() > MAX_ARTIFACTS {
        return Err(ValidationError::new("artifacts", format!("at most {MAX_ARTIFACTS} artifacts")));
    }
    for (i, a) in r.artifacts.iter().enumerate() {
        let relative = !a.path.starts_with('/') && !a.path.split('/').any(|c| c.is_empty() || c == "." || c == "..");
        text(&format!("artifacts[{i}].path"), &a.path, 1, 400)?;
        if !relative {
            return Err(ValidationError::new(
                format!("artifacts[{i}].path"),
                "must be a relative path inside the workdir",
            ));
        }
        // Printable ASCII only: an invisible or look-alike character would let one path pass
        // for another on a page, and paths are what digests are compared by.
        if !a.path.chars().all(|c| c.is_ascii_graphic() || c == ' ') {
            return Err(ValidationError::new(format!("artifacts[{i}].path"), "must be printable ASCII"));
        }
        if a.sha256.len() != 64 || !a.sha256.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(ValidationError::new(format!("artifacts[{i}].sha256"), "must be 64 lowercase hex digits"));
        }
        if r.artifacts[..i].iter().any(|b| b.path == a.path) {
            return Err(ValidationError::new(format!("artifacts[{i}].path"), "listed twice"));
        }
    }

    in_range("started_at", &r.started_at)?;
    if let Some(t) = &r.finished_at {
        in_range("finished_at", t)?;
    }
    for (i, st) in r.steps.iter().enumerate() {
        in_range(&format!("steps[{i}].started_at"), &st.started_at)?;
        in_range(&format!("steps[{i}].finished_at"), &st.finished_at)?;
    }
    let future_limit = now + MAX_FUTURE;
    match r.state {
        BuildState::Started => {
            if r.result.is_some() {
                return Err(ValidationError::new("result", "must be absent while state is \"started\""));
            }
            if r.finished_at.is_some() {
                return Err(ValidationError::new("finished_at", "must be absent while state is \"started\""));
            }
        }
        BuildState::Finished => {
            if r.result.is_none() {
                return Err(ValidationError::new("result", "is required when state is \"finished\""));
            }
            let Some(finished) = r.finished_at else {
                return Err(ValidationError::new("finished_at", "is required when state is \"finished\""));
            };
            if finished < r.started_at {
                return Err(ValidationError::new("finished_at", "is before started_at"));
            }
            if finished > future_limit {
                return Err(ValidationError::new(
                    "finished_at",
                    format!("{finished} is more than 5 minutes in the future (server time {now})"),
                ));
            }
        }
    }
    if r.started_at > future_limit {
        return Err(ValidationError::new("started_at", "is more than 5 minutes in the future"));
    }

    if r.steps.len() > limits.max_steps {
        return Err(ValidationError::new(
            "steps",
            format!("{} steps, at most {} allowed", r.steps.len(), limits.max_steps),
        ));
    }
    for (i, s) in r.steps.iter().enumerate() {
        let at = |f: &str| format!("steps[{i}].{f}");
        text(&at("name"), &s.name, 1, 200)?;
        if s.finished_at < s.started_at {
            return Err(ValidationError::new(at("finished_at"), "is before started_at"));
        }
        if s.finished_at > future_limit {
            return Err(ValidationError::new(at("finished_at"), "is more than 5 minutes in the future"));
        }
        if let Some(log) = &s.log
            && log.len() > limits.max_log_bytes
        {
            return Err(ValidationError::new(
                at("log"),
                format!("{} bytes, at most {} allowed", log.len(), limits.max_log_bytes),
            ));
        }
    }

    if r.tests.len() > limits.max_tests {
        return Err(ValidationError::new(
            "tests",
            format!("{} tests, at most {} allowed", r.tests.len(), limits.max_tests),
        ));
    }
    for (i, t) in r.tests.iter().enumerate() {
        text(&format!("tests[{i}].suite"), &t.suite, 0, 1000)?;
        text(&format!("tests[{i}].name"), &t.name, 1, 2000)?;
        if t.message.as_deref().is_some_and(|m| m.contains('\0')) {
            return Err(ValidationError::new(format!("tests[{i}].message"), "must not contain NUL characters"));
        }
        if let Some(m) = &t.message
            && m.len() > limits.max_message_bytes
        {
            return Err(ValidationError::new(
                format!("tests[{i}].message"),
                format!("{} bytes, at most {} allowed", m.len(), limits.max_message_bytes),
            ));
        }
    }

    if r.properties.len() > limits.max_properties {
        return Err(ValidationError::new(
            "properties",
            format!("{} properties, at most {} allowed", r.properties.len(), limits.max_properties),
        ));
    }
    for (k, v) in &r.properties {
        name(&format!("properties.{k}"), k, 64)
            .map_err(|e| ValidationError::new(e.field, format!("key {}", e.message)))?;
        text(&format!("properties.{k}"), v, 0, 1000)?;
    }
    Ok(())
}

/// Years 1 to 9999: what every database and every reader can hold.
fn in_range(field: &str, t: &chrono::DateTime<chrono::FixedOffset>) -> Result<(), ValidationError> {
    use chrono::Datelike as _;
    if (1..=9999).contains(&t.to_utc().year()) {
        Ok(())
    } else {
        Err(ValidationError::new(field, "must be between the years 1 and 9999"))
    }
}

/// Builder, project and uuid names: `[A-Za-z0-9._-]{1,max}`, not starting with a dot.
pub fn name(field: &str, v: &str, max: usize) -> Result<(), ValidationError> {
    if v.is_empty() || v.len() > max {
        return Err(ValidationError::new(field, format!("must be 1 to {max} characters long")));
    }
    // Names become file and directory names (state, checkouts): `.`, `..` and hidden names
    // would point elsewhere than meant.
    if v.starts_with('.') {
        return Err(ValidationError::new(field, "must not start with a dot"));
    }
    if let Some(c) = v.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
        return Err(ValidationError::new(field, format!("may only hold A-Z a-z 0-9 . _ - (found {c:?})")));
    }
    Ok(())
}

/// Free text on one line: no control characters.
fn text(field: &str, v: &str, min: usize, max: usize) -> Result<(), ValidationError> {
    if v.len() < min || v.len() > max {
        return Err(ValidationError::new(field, format!("must be {min} to {max} bytes long")));
    }
    if v.chars().any(char::is_control) {
        return Err(ValidationError::new(field, "must not contain control characters"));
    }
    Ok(())
}

/// A single printable word, such as a commit id.
fn token(field: &str, v: &str, max: usize) -> Result<(), ValidationError> {
    text(field, v, 1, max)?;
    if v.chars().any(char::is_whitespace) {
        return Err(ValidationError::new(field, "must not contain white space"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-06-01T12:00:00Z").map(|t| t.to_utc()).unwrap_or_default()
    }

    fn finished() -> Value {
        json!({
            "format": "tbox-report/1", "uuid": "0b8e-1", "project": "demo", "builder": "alice-deb12",
            "state": "finished", "result": "failure", "branch": "main", "revision": "deadbeef",
            "started_at": "2026-06-01T11:00:00Z", "finished_at": "2026-06-01T13:30:00+02:00",
            "steps": [{"name": "build", "result": "success", "started_at": "2026-06-01T11:00:00Z",
                       "finished_at": "2026-06-01T11:10:00Z", "exit_code": 0, "log": "ok\n"},
                      {"name": "test", "kind": "test", "result": "failure", "started_at": "2026-06-01T11:10:00Z",
                       "finished_at": "2026-06-01T11:20:00Z", "exit_code": 2}],
            "tests": [{"suite": "s", "name": "t1", "result": "failed", "duration_ms": 12, "message": "boom"}],
            "properties": {"os": "linux"}, "reporter": "tbox-report 0.1.0",
            "some_future_field": {"ignored": true}
        })
    }

    fn parse(v: &Value) -> Result<Report, ParseError> {
        parse_report(v.to_string().as_bytes(), now())
    }

    #[test]
    fn trailing_bytes_attack() {
        let body = finished().to_string();
        for tail in ["GARBAGE", "\0", &body, "\n{}", " x"] {
            let smuggled = format!("{body}{tail}");
            assert!(
                matches!(parse_report(smuggled.as_bytes(), now()), Err(ParseError::Malformed(_))),
                "accepted a body with {tail:?} after the report"
            );
        }
        // Trailing white space is still part of one JSON document.
        assert!(parse_report(format!("{body} \n").as_bytes(), now()).is_ok());
    }

    fn field_of(v: &Value) -> String {
        match parse(v) {
            Err(ParseError::Invalid(e)) => e.field,
            other => format!("not a validation error: {other:?}"),
        }
    }

    #[test]
    fn accepts_a_full_report_and_ignores_unknown_fields() -> Result<(), ParseError> {
        let r = parse(&finished())?;
        assert_eq!(r.steps.len(), 2);
        assert_eq!(r.tests[0].duration_ms, Some(12));
        Ok(())
    }

    #[test]
    fn malformed_json_is_not_a_validation_error() {
        assert!(matches!(parse_report(b"{\"format\": ", now()), Err(ParseError::Malformed(_))));
        assert!(matches!(parse_report(b"not json", now()), Err(ParseError::Malformed(_))));
    }

    #[test]
    fn errors_name_the_field() {
        let mut v = finished();
        v["state"] = json!("running");
        assert_eq!(field_of(&v), "state");

        // The sandbox field is one documented set, the one the reporter writes.
        for kind in crate::SANDBOX_KINDS {
            let mut v = finished();
            v["sandbox"] = json!(kind);
            let body = serde_json::to_vec(&v).unwrap_or_default();
            assert!(parse_report(&body, now()).is_ok(), "{kind}");
        }
        let mut v = finished();
        v["sandbox"] = json!("docker");
        assert_eq!(field_of(&v), "sandbox");

        let mut v = finished();
        v["steps"][1]["result"] = json!("fine");
        assert_eq!(field_of(&v), "steps[1].result");

        let mut v = finished();
        v["builder"] = json!("alice bob");
        assert_eq!(field_of(&v), "builder");

        let mut v = finished();
        v["builder"] = json!("a".repeat(65));
        assert_eq!(field_of(&v), "builder");

        let mut v = finished();
        v["started_at"] = json!("yesterday");
        assert_eq!(field_of(&v), "started_at");

        let mut v = finished();
        v.as_object_mut().map(|o| o.remove("revision"));
        assert_eq!(field_of(&v), "report");

        let mut v = finished();
        v["tests"][0]["result"] = json!("ok");
        assert_eq!(field_of(&v), "tests[0].result");

        let mut v = finished();
        v["format"] = json!("tbox-report/2");
        assert_eq!(field_of(&v), "format");

        let mut v = finished();
        v["properties"]["bad key"] = json!("x");
        assert_eq!(field_of(&v), "properties.bad key");

        let mut v = finished();
        v["started_at"] = json!("-5000-01-01T00:00:00Z");
        assert_eq!(field_of(&v), "started_at");

        let mut v = finished();
        v["tests"][0]["message"] = json!("a\u{0}b");
        assert_eq!(field_of(&v), "tests[0].message");
    }

    #[test]
    fn finished_needs_result_and_time_started_forbids_them() {
        let mut v = finished();
        v.as_object_mut().map(|o| o.remove("result"));
        assert_eq!(field_of(&v), "result");

        let mut v = finished();
        v["state"] = json!("started");
        assert_eq!(field_of(&v), "result");
    }

    #[test]
    fn future_finished_at_is_refused_but_old_reports_are_fine() {
        let mut v = finished();
        v["finished_at"] = json!("2026-06-01T12:06:00Z");
        assert_eq!(field_of(&v), "finished_at");

        let mut v = finished();
        v["finished_at"] = json!("2026-06-01T12:04:00Z");
        assert!(parse(&v).is_ok(), "four minutes of clock skew is tolerated");

        let mut v = finished();
        v["started_at"] = json!("2020-01-01T00:00:00Z");
        v["finished_at"] = json!("2020-01-01T01:00:00Z");
        assert!(parse(&v).is_ok(), "a report spooled for years is still accepted");
    }

    #[test]
    fn limits_are_enforced() {
        let limits = Limits { max_steps: 1, max_tests: 0, ..Limits::default() };
        let body = finished().to_string();
        match parse_report_with(body.as_bytes(), now(), &limits) {
            Err(ParseError::Invalid(e)) => assert_eq!(e.field, "steps"),
            other => panic!("expected a steps error, got {other:?}"),
        }
    }
}
