//! Keeps a report within what the server accepts, so that a very broken build (thousands of
//! failing tests with long traces, huge logs) is still reported instead of refused every run.

use tbox_protocol::{Report, TestOutcome};

/// Test results the server takes in one report.
pub const MAX_TESTS: usize = 100_000;
/// Default size a report is fitted into: well under the server's default 32 MiB limit.
pub const DEFAULT_BYTES: usize = 24 << 20;

fn size(r: &Report) -> usize {
    serde_json::to_vec(r).map(|v| v.len()).unwrap_or(usize::MAX)
}

/// Trims `r` until its JSON fits in `budget` bytes: first test messages, then passed tests'
/// details, then passed and skipped tests, then logs (keeping their ends). Returns notes on
/// what was cut, for the reader of the build page.
pub fn fit(r: &mut Report, budget: usize) -> Vec<String> {
    let mut notes = Vec::new();
    if r.tests.len() > MAX_TESTS {
        // Failures first: they are what the report is for.
        r.tests.sort_by_key(|t| matches!(t.result, TestOutcome::Passed | TestOutcome::Skipped));
        notes.push(format!("{} test results over the limit of {MAX_TESTS} were left out", r.tests.len() - MAX_TESTS));
        r.tests.truncate(MAX_TESTS);
    }
    if size(r) <= budget {
        return notes;
    }
    for cap in [4096, 512] {
        let mut cut = 0;
        for t in &mut r.tests {
            if let Some(m) = &mut t.message
                && m.len() > cap
            {
                let mut end = cap;
                while !m.is_char_boundary(end) {
                    end -= 1;
                }
                m.truncate(end);
                m.push_str(" …");
                cut += 1;
            }
        }
        if cut > 0 {
            notes.push(format!("{cut} test messages were shortened to {cap} bytes to fit the report"));
        }
        if size(r) <= budget {
            return notes;
        }
    }
    let before = r.tests.len();
    r.tests.retain(|t| !matches!(t.result, TestOutcome::Passed | TestOutcome::Skipped));
    if r.tests.len() < before {
        notes
            .push(format!("{} passed or skipped test results were left out to fit the report", before - r.tests.len()));
    }
    let mut cap = budget / 2 / r.steps.len().max(1);
    while size(r) > budget && cap > 1024 {
        for s in &mut r.steps {
            if let Some(log) = &mut s.log
                && log.len() > cap
            {
                let head = floor(log, cap / 2);
                let tail = ceil(log, log.len() - cap / 2);
                *log = format!("{}\n[tbox-report] … log shortened to fit the report …\n{}", &log[..head], &log[tail..]);
                s.log_truncated = true;
            }
        }
        notes.push(format!("logs were shortened to about {cap} bytes each to fit the report"));
        cap /= 2;
    }
    notes
}

fn floor(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn ceil(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;
    use tbox_protocol::{BuildResult, BuildState, Step, TestResult};

    fn report(tests: usize, message: usize, log: usize) -> Report {
        let t = chrono::Utc::now().fixed_offset();
        Report {
            format: tbox_protocol::FORMAT.into(),
            uuid: "u".into(),
            project: "p".into(),
            builder: "b".into(),
            state: BuildState::Finished,
            result: Some(BuildResult::Failure),
            branch: "main".into(),
            revision: "r".into(),
            started_at: t,
            finished_at: Some(t),
            steps: vec![Step {
                name: "s".into(),
                result: BuildResult::Failure,
                started_at: t,
                finished_at: t,
                exit_code: Some(1),
                kind: None,
                log: Some("x".repeat(log)),
                log_truncated: false,
            }],
            tests: (0..tests)
                .map(|i| TestResult {
                    suite: "s".into(),
                    name: format!("t{i}"),
                    result: if i % 2 == 0 { TestOutcome::Failed } else { TestOutcome::Passed },
                    duration_ms: None,
                    message: Some("trace ".repeat(message / 6)),
                })
                .collect(),
            properties: Default::default(),
            reporter: String::new(),
            recipe_version: None,
            recipe_key: None,
            sandbox: None,
            lease: None,
            artifacts: Vec::new(),
        }
    }

    #[test]
    fn small_reports_are_untouched() {
        let mut r = report(10, 100, 1000);
        let before = r.clone();
        assert!(fit(&mut r, DEFAULT_BYTES).is_empty());
        assert_eq!(r, before);
    }

    #[test]
    fn huge_reports_shrink_to_the_budget_keeping_failures() {
        let mut r = report(4000, 16 << 10, 8 << 20);
        let notes = fit(&mut r, 4 << 20);
        assert!(size(&r) <= 4 << 20, "{} bytes", size(&r));
        assert!(!notes.is_empty());
        assert!(r.tests.iter().filter(|t| t.result == TestOutcome::Failed).count() == 2000, "every failure kept");
    }
}
