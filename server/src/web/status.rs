//! How a result looks: a CSS class for the colour, plus a glyph and a word, never colour alone.

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
pub fn of(b: &crate::db::models::Build, failing_step_kind: Option<&str>) -> (&'static str, &'static str, &'static str) {
    if b.state == "finished" && b.agreement.as_deref() == Some("disputed") {
        return ("disputed", "⚖", "disputed");
    }
    of_build(&b.state, b.result.as_deref(), failing_step_kind)
}

/// Glyph for a step's result.
pub fn glyph(result: &str) -> &'static str {
    of_build("finished", Some(result), None).1
}

/// A duration such as `1h 02m`, `3m 07s` or `12s`.
pub fn duration(secs: i64) -> String {
    let secs = secs.max(0);
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m {:02}s", secs / 60, secs % 60),
        _ => format!("{}h {:02}m", secs / 3600, (secs % 3600) / 60),
    }
}

/// An age such as `3h 12m`, `2d 4h` or `45s`.
pub fn age(d: chrono::TimeDelta) -> String {
    let secs = d.num_seconds().max(0);
    // Minutes at the finest, so a page (and its ETag) stays the same for a while.
    match secs {
        0..60 => "<1m".to_owned(),
        60..3600 => format!("{}m", secs / 60),
        3600..86400 => format!("{}h {:02}m", secs / 3600, (secs % 3600) / 60),
        _ => format!("{}d {}h", secs / 86400, (secs % 86400) / 3600),
    }
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
        assert_eq!(duration(3725), "1h 02m");
        assert_eq!(duration(187), "3m 07s");
    }
}
