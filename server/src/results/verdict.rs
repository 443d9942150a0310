//! What a build means, as every page, feed, API answer and notification says it: green, red
//! or neither, and the class, glyph and word it is shown with (never colour alone).

use crate::db::models::Build;

/// Class, glyph and word for a build.
///
/// A failure whose first failing step is a test step is "tests failed" (orange): the code
/// builds, tests fail. Any other failure is "failed" (red): the tree is broken. A build that
/// never sent its `finished` report is "lost" (slate): nothing is known about the source.
pub fn of_build(
    state: &str,
    result: Option<&str>,
    failing_step_kind: Option<&str>,
) -> (&'static str, &'static str, &'static str) {
    if state == "started" {
        return if result == Some(crate::db::builds::LOST) {
            ("lost", "∅", "lost")
        } else {
            ("building", "⟳", "building")
        };
    }
    match result {
        Some("success") => ("success", "✔", "success"),
        Some("warnings") => ("warnings", "⚠", "warnings"),
        Some("failure") if failing_step_kind == Some("test") => ("tests-failed", "✘", "tests failed"),
        Some("failure") => ("failure", "✘", "failed"),
        Some("exception") => ("exception", "!", "exception"),
        Some("skipped") => ("skipped", "–", "skipped"),
        Some("cancelled") => ("cancelled", "⊘", "cancelled"),
        _ => ("nodata", "?", "no data"),
    }
}

/// Class, glyph and word for a build as pages, feeds and messages show it: an answer other
/// builders disagreed with is "disputed", neither green nor red on its builder's word alone
/// (DESIGN: a dispute never makes a revision look green).
pub fn of(b: &Build, failing_step_kind: Option<&str>) -> (&'static str, &'static str, &'static str) {
    if b.state == "finished" && b.agreement.as_deref() == Some("disputed") {
        return ("disputed", "⚖", "disputed");
    }
    of_build(&b.state, b.result.as_deref(), failing_step_kind)
}

/// Glyph for a step's result.
pub fn glyph(result: &str) -> &'static str {
    of_build("finished", Some(result), None).1
}

/// Green (`Some(true)`), red (`Some(false)`) or neither: what "broke", "fixed", "failing since"
/// and the badges are about. Only a finished build is either, and not one whose answer other
/// builders disputed (DESIGN: a dispute never makes a revision look green); an exception,
/// a cancelled or skipped build says nothing about the source.
pub fn colour(b: &Build) -> Option<bool> {
    if b.state != "finished" || b.agreement.as_deref() == Some("disputed") {
        return None;
    }
    crate::db::builds::colour(b.result.as_deref())
}

/// Not heard from within `stale_after` (or never).
pub fn is_stale(last: Option<chrono::NaiveDateTime>, stale_after: chrono::TimeDelta) -> bool {
    last.is_none_or(|t| crate::db::now() - t > stale_after)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_failures_are_orange_and_build_failures_red() {
        assert_eq!(of_build("finished", Some("failure"), Some("test")).0, "tests-failed");
        assert_eq!(of_build("finished", Some("failure"), None).0, "failure");
        assert_eq!(of_build("started", None, None).2, "building");
        assert_eq!(of_build("started", Some("lost"), None), ("lost", "∅", "lost"));
    }
}
