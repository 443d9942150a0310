//! The contract between a tbox reporter and a tbox server, with no I/O in it.
//!
//! A volunteer's machine builds a project, describes what happened in a [`Report`]
//! (format `tbox-report/1`), serialises it to JSON and signs the exact bytes with its
//! RSA key ([`PrivateKey::sign`]). The server checks those same bytes against the
//! builder's registered public key ([`PublicKey::verify`]) *before* it parses them,
//! then parses and validates them with [`parse_report`].
//!
//! Everything here is pure: callers pass in the current time and, for key generation,
//! the random number generator. That keeps this crate usable from the server, the
//! reporter and any other tool without dragging in a runtime.
//!
//! ```
//! use tbox_protocol::{parse_report, report_id};
//! let body = br#"{"format":"tbox-report/1","uuid":"b1","project":"demo","builder":"alice",
//!   "state":"started","branch":"main","revision":"abc123","started_at":"2026-01-01T00:00:00Z"}"#;
//! let now = chrono::Utc::now();
//! let report = parse_report(body, now).expect("valid report");
//! assert_eq!(report.builder, "alice");
//! assert_eq!(report_id(body).len(), 64);
//! ```

mod keylist;
mod keys;
mod limits;
mod names;
mod recipe;
mod report;
mod request;
mod validate;

pub use keylist::{
    KEYS_FORMAT, KeyList, KeyListError, MAX_KEY_LIST_BYTES, is_fingerprint, parse_key_list, verify_key_list,
};
pub use keys::{KeyError, PrivateKey, PublicKey, SignatureError, hex, report_id};
pub use limits::{DEFAULT_LIMITS, Limits as StepLimits, ResourceLimits, human_size};
pub use names::{BranchName, MAX_BRANCH_BYTES, Revision, check_branch_pattern};
pub use recipe::{
    MAX_ARTIFACT_GLOBS, MAX_EXPIRY_DAYS, MAX_RECIPE_BYTES, MAX_VERSION, RECIPE_FORMAT, Recipe, RecipeError, RecipeStep,
    branch_matches, check_artifact_globs, parse_duration, parse_recipe, verify_recipe,
};
pub use report::{
    Artifact, BuildResult, BuildState, FORMAT, MAX_ARTIFACTS, Report, SANDBOX_KINDS, Step, StepKind, TestOutcome,
    TestResult,
};
pub use request::{BuildRequest, Distinct, MAX_REQUEST_AGE_DAYS, MAX_REQUEST_BUILDERS, RequestError, parse_request};
pub use validate::{Limits, ParseError, ValidationError, name as validate_name, parse_report, parse_report_with};
