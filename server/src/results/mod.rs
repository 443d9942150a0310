//! What results mean: one home for the rules every page, feed, API answer and notification
//! reads, so that they say the same thing by construction.
//!
//! - [`verdict`]: what a build means: green, red or neither, and how it is shown.
//! - [`errors`]: what a red build's logs say: the brief view and the first error line.
//! - [`failing`]: the tests failing now (since when, flaky, failing only on one builder) and
//!   one test's history.
//! - [`summary`]: each project's builders counted by colour.
//! - [`agreement`]: whether the builders answering a request agree, the verdict, and each
//!   builder's record.
//! - [`revision`]: a revision's commit status, per builder and in summary, for forges.
//! - [`tests`]: for a failing test, since which build it fails and whether it is flaky on its
//!   builder, decided when its report is stored and kept with the result.

pub mod agreement;
pub mod errors;
pub mod failing;
pub mod revision;
pub mod summary;
pub mod tests;
pub mod verdict;
