//! The report document, field for field as in DESIGN.md.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, FixedOffset};
use serde::{Deserialize, Serialize};

/// The value of the `format` field this crate reads and writes.
pub const FORMAT: &str = "tbox-report/1";

/// The values of a report's `sandbox` field, the one set both sides use: steps ran in
/// bubblewrap without or with the network, or unsandboxed because the volunteer opted out.
pub const SANDBOX_KINDS: &[&str] = &["bubblewrap", "bubblewrap+network", "none"];

/// One build as a volunteer's machine saw it.
///
/// Unknown fields are ignored when parsing, so later reporters can add fields
/// without breaking older servers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Always [`FORMAT`].
    pub format: String,
    /// Chosen by the reporter; a `started` and a later `finished` report share it.
    pub uuid: String,
    /// The project's name on the server.
    pub project: String,
    /// The builder's registered name.
    pub builder: String,
    /// Whether the build is still running.
    pub state: BuildState,
    /// The outcome; required once `state` is `finished`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<BuildResult>,
    /// The branch built, e.g. `main`.
    pub branch: String,
    /// The source revision built (a commit id).
    pub revision: String,
    /// When the build started.
    pub started_at: DateTime<FixedOffset>,
    /// When the build finished; absent while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<FixedOffset>>,
    /// The steps run so far, in order.
    #[serde(default)]
    pub steps: Vec<Step>,
    /// Per-test results, if the build collected any.
    #[serde(default)]
    pub tests: Vec<TestResult>,
    /// Free key/values about the machine: os, arch, compiler, …
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// The reporting program and its version.
    #[serde(default)]
    pub reporter: String,
    /// The version of the project's signed recipe this build ran, if it ran one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipe_version: Option<u64>,
    /// The fingerprint (`SHA256:…`) of the project key that signed that recipe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipe_key: Option<String>,
    /// How the steps were isolated: one of [`SANDBOX_KINDS`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    /// The lease this build answers (a project's build request); its finished report closes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<u64>,
    /// Digests of the files the recipe names as artifacts: where two builders' reports both
    /// list a path, agreement compares them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub artifacts: Vec<Artifact>,
}

/// Most artifacts one report may list.
pub const MAX_ARTIFACTS: usize = 100;

/// A file a build produced, named by the recipe's `artifacts` globs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifact {
    /// Relative to the workdir, `/`-separated.
    pub path: String,
    /// Lowercase hex SHA-256 of its bytes.
    pub sha256: String,
    /// Its size in bytes.
    pub size: u64,
}

/// One step of a build (checkout, build, test, …).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    /// The step's name as configured.
    pub name: String,
    /// How the step ended.
    pub result: BuildResult,
    /// When the step started.
    pub started_at: DateTime<FixedOffset>,
    /// When the step ended.
    pub finished_at: DateTime<FixedOffset>,
    /// The process's exit code, when it exited normally.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// What kind of step this is; a failing `test` step means "tests failed", not "broken".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<StepKind>,
    /// The step's combined output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<String>,
    /// Whether the reporter cut the log to keep it under its size cap.
    #[serde(default)]
    pub log_truncated: bool,
}

/// One test case's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TestResult {
    /// The suite (class, module, file) holding the test.
    #[serde(default)]
    pub suite: String,
    /// The test's name within its suite.
    pub name: String,
    /// How the test ended.
    pub result: TestOutcome,
    /// How long it ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// The failure or skip message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Whether a build is running or done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BuildState {
    /// Still running: the waterfall shows it as building.
    Started,
    /// Done: `result` and `finished_at` are set.
    Finished,
}

/// How a build or a step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BuildResult {
    /// Everything passed.
    Success,
    /// Passed, with warnings.
    Warnings,
    /// Something failed: the build, or its tests.
    Failure,
    /// The reporter itself failed (could not start a step, workdir missing, …).
    Exception,
    /// Not run.
    Skipped,
    /// Stopped before the end.
    Cancelled,
}

/// What sort of step a step is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StepKind {
    /// A test step: its failure means "tests failed".
    Test,
}

/// How one test case ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TestOutcome {
    /// The test passed.
    Passed,
    /// An assertion failed.
    Failed,
    /// The test was not run.
    Skipped,
    /// The test could not run to completion (an unexpected error).
    Error,
}

macro_rules! wire_names {
    ($ty:ty { $($variant:ident => $name:literal),+ $(,)? }) => {
        impl $ty {
            /// The name used on the wire and in the database.
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $name),+ }
            }

            /// Every value, in declaration order.
            pub const ALL: &'static [$ty] = &[$(Self::$variant),+];

            /// Parses a wire name; `None` for anything else.
            pub fn parse(s: &str) -> Option<Self> {
                match s { $($name => Some(Self::$variant),)+ _ => None }
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

wire_names!(BuildState { Started => "started", Finished => "finished" });
wire_names!(BuildResult {
    Success => "success",
    Warnings => "warnings",
    Failure => "failure",
    Exception => "exception",
    Skipped => "skipped",
    Cancelled => "cancelled",
});
wire_names!(StepKind { Test => "test" });
wire_names!(TestOutcome { Passed => "passed", Failed => "failed", Skipped => "skipped", Error => "error" });

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_round_trip_through_serde() -> Result<(), serde_json::Error> {
        for r in BuildResult::ALL {
            let json = serde_json::to_string(r)?;
            assert_eq!(json, format!("\"{}\"", r.as_str()));
            assert_eq!(BuildResult::parse(r.as_str()), Some(*r));
        }
        for t in TestOutcome::ALL {
            assert_eq!(serde_json::to_string(t)?, format!("\"{t}\""));
        }
        assert_eq!(BuildState::parse("running"), None);
        Ok(())
    }
}
