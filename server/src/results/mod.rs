//! What results mean: one home for the rules every page, feed, API answer and notification
//! reads, so that they say the same thing by construction.
//!
//! - [`agreement`]: whether the builders answering a request agree, the verdict, and each
//!   builder's record.
//! - [`tests`]: for a failing test, since which build it fails and whether it is flaky on its
//!   builder, decided when its report is stored and kept with the result.

pub mod agreement;
pub mod tests;
