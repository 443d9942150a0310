//! JUnit XML → per-test results, for the dialects real test runners write.
//!
//! Every runner bends the format a little (nested suites, `status=` attributes instead of
//! child elements, flaky reruns, suite-level errors with no testcase, odd time formats), so
//! this reads events rather than mapping to a fixed schema. DTDs and entity declarations are
//! refused outright: a results file must never make us fetch or expand anything.

use quick_xml::Reader;
use quick_xml::events::{BytesStart, Event};
use tbox_protocol::{TestOutcome, TestResult};

/// Name given to a result that stands for a whole suite (an error outside any testcase).
pub const SUITE_LEVEL: &str = "(suite)";

const MAX_MESSAGE: usize = 16 << 10;

/// Why a file could not be read as JUnit XML.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct JunitError(String);

#[derive(Default)]
struct Case {
    suite: String,
    name: String,
    duration_ms: Option<u64>,
    status: Option<String>,
    /// gtest's `result=` (`completed`, `skipped`, `suppressed`).
    result: Option<String>,
    failure: bool,
    error: bool,
    skipped: bool,
    message: String,
    /// The next text starts the body of a failure/error element (separate it from the message).
    fresh: bool,
}

/// Which element's text we are collecting.
#[derive(PartialEq)]
enum Capture {
    Nothing,
    CaseMessage,
    SuiteMessage,
}

/// Parses one JUnit XML document.
pub fn parse(xml: &str) -> Result<Vec<TestResult>, JunitError> {
    let mut budget = Budget { results: usize::MAX, bytes: usize::MAX };
    parse_within(xml, &mut budget).map(|(r, _)| r)
}

/// How many more results, and bytes of their names and messages, may be read; what reading
/// takes is taken off. A build's JUnit files are the build's: millions of tiny test cases would
/// otherwise fill the volunteer's memory, outside the sandbox, long before the server refused
/// the report.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    pub results: usize,
    pub bytes: usize,
}

impl Budget {
    /// What one report may carry: the server takes at most 100,000 results, in a report of at
    /// most 32 MiB that the step logs share (16 MiB of them).
    pub fn for_a_report() -> Budget {
        Budget { results: tbox_protocol::Limits::default().max_tests, bytes: 12 << 20 }
    }
}

/// [`parse`], stopping when `budget` runs out: the results read so far, and whether it did.
pub fn parse_within(xml: &str, budget: &mut Budget) -> Result<(Vec<TestResult>, bool), JunitError> {
    let xml = xml.strip_prefix('\u{feff}').unwrap_or(xml);
    let mut reader = Reader::from_str(xml);
    let mut suites: Vec<String> = Vec::new();
    let mut case: Option<Case> = None;
    let mut suite_error: Option<Case> = None;
    let mut capture = Capture::Nothing;
    // Depth of elements inside a testcase that we do not capture (system-out, reruns, …).
    let mut ignored_depth = 0usize;
    let mut results: Vec<TestResult> = Vec::new();
    let mut saw_root = false;
    let mut counted = 0;

    loop {
        // Each new result is paid for as it comes.
        if !pay(&mut results, &mut counted, budget) {
            return Ok((results, true));
        }
        let event = reader.read_event().map_err(|e| at(&reader, e))?;
        match event {
            Event::DocType(_) => {
                return Err(JunitError("DTDs are not accepted in JUnit files".into()));
            }
            Event::Start(ref e) | Event::Empty(ref e) => {
                saw_root = true;
                let empty = matches!(event, Event::Empty(_));
                if ignored_depth > 0 {
                    ignored_depth += usize::from(!empty);
                    continue;
                }
                let tag = e.local_name().as_ref().to_owned();
                match (tag.as_str(), case.as_mut()) {
                    ("testsuite", None) if !empty => {
                        suites.push(attr(e, "name")?.unwrap_or_default());
                    }
                    ("testcase", None) => {
                        let mut c = Case {
                            suite: attr(e, "classname")?
                                .filter(|s| !s.is_empty())
                                .or_else(|| suites.last().cloned())
                                .unwrap_or_default(),
                            name: attr(e, "name")?.unwrap_or_default(),
                            duration_ms: attr(e, "time")?.as_deref().and_then(parse_seconds),
                            status: attr(e, "status")?,
                            result: attr(e, "result")?,
                            ..Case::default()
                        };
                        if empty {
                            results.push(finish(std::mem::take(&mut c)));
                        } else {
                            case = Some(c);
                        }
                    }
                    (kind @ ("failure" | "error" | "skipped"), Some(c)) => {
                        match kind {
                            "failure" => c.failure = true,
                            "error" => c.error = true,
                            _ => c.skipped = true,
                        }
                        let message = attr(e, "message")?.unwrap_or_default();
                        append(&mut c.message, &message);
                        if !empty {
                            c.fresh = true;
                            capture = Capture::CaseMessage;
                        }
                    }
                    (kind @ ("failure" | "error"), None) if !suites.is_empty() => {
                        // An error outside any testcase (a class that failed to load, a
                        // package that did not build): keep it as a result for the suite.
                        let mut c = Case {
                            suite: suites.last().cloned().unwrap_or_default(),
                            name: SUITE_LEVEL.into(),
                            ..Case::default()
                        };
                        if kind == "failure" {
                            c.failure = true;
                        } else {
                            c.error = true;
                        }
                        append(&mut c.message, &attr(e, "message")?.unwrap_or_default());
                        if empty {
                            results.push(finish(c));
                        } else {
                            c.fresh = true;
                            suite_error = Some(c);
                            capture = Capture::SuiteMessage;
                        }
                    }
                    (_, Some(_)) if !empty => ignored_depth = 1,
                    _ => {}
                }
            }
            Event::End(e) => {
                if ignored_depth > 0 {
                    ignored_depth -= 1;
                    continue;
                }
                match e.local_name().as_ref() {
                    "testcase" => {
                        if let Some(c) = case.take() {
                            results.push(finish(c));
                        }
                        capture = Capture::Nothing;
                    }
                    "testsuite" => {
                        suites.pop();
                    }
                    "failure" | "error" | "skipped" => {
                        if capture == Capture::SuiteMessage
                            && let Some(c) = suite_error.take()
                        {
                            results.push(finish(c));
                        }
                        capture = Capture::Nothing;
                    }
                    _ => {}
                }
            }
            Event::Text(t) if capture != Capture::Nothing && ignored_depth == 0 => {
                push_text(&mut case, &mut suite_error, &capture, &t.into_inner());
            }
            Event::CData(t) if capture != Capture::Nothing && ignored_depth == 0 => {
                push_text(&mut case, &mut suite_error, &capture, &t.into_inner());
            }
            Event::GeneralRef(r) => {
                let text = if r.is_char_ref() {
                    r.resolve_char_ref().map_err(|e| at(&reader, e))?.map(String::from).unwrap_or_default()
                } else {
                    match r.into_inner().as_ref() {
                        "amp" => "&".into(),
                        "lt" => "<".into(),
                        "gt" => ">".into(),
                        "quot" => "\"".into(),
                        "apos" => "'".into(),
                        other => return Err(JunitError(format!("undefined entity &{other};"))),
                    }
                };
                if capture != Capture::Nothing && ignored_depth == 0 {
                    push_text(&mut case, &mut suite_error, &capture, &text);
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if !saw_root {
        return Err(JunitError("the file holds no XML element".into()));
    }
    if case.is_some() || !suites.is_empty() {
        return Err(JunitError("the file ends before its elements are closed (truncated?)".into()));
    }
    let full = !pay(&mut results, &mut counted, budget);
    Ok((results, full))
}

/// Takes the results from `counted` on off `budget`; when it runs out, drops those it could
/// not pay for and returns false.
fn pay(results: &mut Vec<TestResult>, counted: &mut usize, budget: &mut Budget) -> bool {
    for r in &results[*counted..] {
        let size = r.suite.len() + r.name.len() + r.message.as_ref().map_or(0, String::len);
        if budget.results == 0 || budget.bytes < size {
            results.truncate(*counted);
            return false;
        }
        budget.results -= 1;
        budget.bytes -= size;
        *counted += 1;
    }
    true
}

fn at<R, E: std::fmt::Display>(reader: &Reader<R>, e: E) -> JunitError {
    JunitError(format!("{e} (at byte {})", reader.buffer_position()))
}

fn attr(e: &BytesStart<'_>, name: &str) -> Result<Option<String>, JunitError> {
    for a in e.attributes().with_checks(false) {
        let a = a.map_err(|err| JunitError(err.to_string()))?;
        if a.key.local_name().as_ref() == name {
            let v = a
                .normalized_value(quick_xml::XmlVersion::Implicit1_0)
                .map_err(|err| JunitError(format!("attribute {name}: {err}")))?;
            return Ok(Some(v.into_owned()));
        }
    }
    Ok(None)
}

fn push_text(case: &mut Option<Case>, suite_error: &mut Option<Case>, capture: &Capture, text: &str) {
    let target = match capture {
        Capture::CaseMessage => case.as_mut(),
        Capture::SuiteMessage => suite_error.as_mut(),
        Capture::Nothing => None,
    };
    if let Some(c) = target
        && c.message.len() < MAX_MESSAGE
    {
        if std::mem::take(&mut c.fresh) && !c.message.is_empty() {
            c.message.push('\n');
        }
        c.message.push_str(text);
    }
}

fn append(message: &mut String, text: &str) {
    if text.is_empty() {
        return;
    }
    if !message.is_empty() {
        message.push('\n');
    }
    message.push_str(text);
}

/// Seconds as runners write them: `1.5`, `0.`, `4.5e-05`, `2,503.1`.
fn parse_seconds(s: &str) -> Option<u64> {
    let secs: f64 = s.trim().replace(',', "").parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| (secs * 1000.0).round() as u64)
}

fn finish(c: Case) -> TestResult {
    let status = c.status.as_deref().map(str::to_ascii_lowercase);
    let gtest = c.result.as_deref().map(str::to_ascii_lowercase);
    let result = if c.error {
        TestOutcome::Error
    } else if c.failure {
        TestOutcome::Failed
    } else if c.skipped || matches!(gtest.as_deref(), Some("skipped" | "suppressed")) {
        // GTEST_SKIP() writes `status="run" result="skipped"`: skipped, not passed.
        TestOutcome::Skipped
    } else {
        match status.as_deref() {
            Some("failed" | "failure" | "fail") => TestOutcome::Failed,
            Some("errored" | "error") => TestOutcome::Error,
            Some("disabled" | "skipped" | "notrun" | "ignored") => TestOutcome::Skipped,
            _ => TestOutcome::Passed,
        }
    };
    let message = c.message.trim();
    TestResult {
        suite: clean(&c.suite, 1000),
        name: match clean(&c.name, 2000) {
            n if n.trim().is_empty() => "(unnamed)".into(),
            n => n,
        },
        result,
        duration_ms: c.duration_ms,
        // NUL has no place in text (and PostgreSQL cannot store it).
        message: (!message.is_empty()).then(|| truncate(message, MAX_MESSAGE).replace('\0', "\u{fffd}")),
    }
}

/// Names go on one line in reports: control characters become spaces, and length is capped.
/// Spaces at either end are kept: a test is looked up by its exact name.
fn clean(s: &str, max: usize) -> String {
    let s: String = s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    truncate(&s, max).to_owned()
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Largest JUnit file read; bigger ones become a note.
const MAX_FILE: u64 = 64 << 20;

/// What [`collect`] found.
#[derive(Debug, Default)]
pub struct Collected {
    pub results: Vec<TestResult>,
    /// Files that match but could not be used (unreadable, not JUnit, too large): as Jenkins'
    /// junit step, these fail the step: results silently missing must not look green.
    pub problems: Vec<String>,
    /// Worth a line in the log, no more (an old file left from an earlier build).
    pub notes: Vec<String>,
    /// How many files matched the globs.
    pub matched: usize,
}

/// Reads the JUnit files under `base` matching `globs` (skipping `.git`), optionally only
/// those written since `since`, within `budget` (shared by a build's steps).
pub fn collect(
    base: &std::path::Path,
    globs: &[String],
    since: Option<std::time::SystemTime>,
    budget: &mut Budget,
) -> Collected {
    let mut notes = Vec::new();
    let mut problems = Vec::new();
    let mut builder = globset::GlobSetBuilder::new();
    for g in globs {
        match globset::Glob::new(g) {
            Ok(glob) => {
                builder.add(glob);
            }
            Err(e) => problems.push(format!("junit glob {g:?} is not valid: {e}")),
        }
    }
    let Ok(set) = builder.build() else {
        return Collected { problems, notes, ..Collected::default() };
    };
    let mut results = Vec::new();
    let mut matched = 0;
    let walk = walkdir::WalkDir::new(base).sort_by_file_name().into_iter().filter_entry(|e| e.file_name() != ".git");
    // Symlinks are skipped (`is_file` is false for them): a build could point one at the
    // volunteer's key, and this runs outside the sandbox.
    for entry in walk.filter_map(Result::ok).filter(|e| e.file_type().is_file()) {
        let Ok(rel) = entry.path().strip_prefix(base) else {
            continue;
        };
        if !set.is_match(rel) {
            continue;
        }
        let meta = entry.metadata().ok();
        if let (Some(since), Some(modified)) = (since, meta.as_ref().and_then(|m| m.modified().ok()))
            && modified < since
        {
            notes.push(format!("JUnit file {} is older than this step; not used", rel.display()));
            continue;
        }
        matched += 1;
        if meta.is_some_and(|m| m.len() > MAX_FILE) {
            problems.push(format!("JUnit file {} is larger than {MAX_FILE} bytes; not read", rel.display()));
            continue;
        }
        let text = match std::fs::read(entry.path()) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) => {
                problems.push(format!("JUnit file {} could not be read: {e}", rel.display()));
                continue;
            }
        };
        match parse_within(&text, budget) {
            Ok((mut r, full)) => {
                results.append(&mut r);
                if full {
                    // Results missing must not look green: the step fails, and says why.
                    problems.push(format!(
                        "JUnit results from {} on were not read: a report carries at most {} test results \
                         and 12 MiB of their names and messages",
                        rel.display(),
                        Budget::for_a_report().results
                    ));
                    break;
                }
            }
            Err(e) => problems.push(format!("JUnit file {} is not valid JUnit XML: {e}", rel.display())),
        }
    }
    Collected { results, problems, notes, matched }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    /// A build's JUnit files are read outside the sandbox: millions of tiny test cases stop at
    /// what a report can carry, and the step is told (not green).
    #[test]
    fn reading_stops_at_what_a_report_can_carry() -> TestResult {
        let mut xml = String::from("<testsuite name=\"s\">");
        for i in 0..250_000 {
            xml.push_str(&format!("<testcase name=\"t{i}\"/>"));
        }
        xml.push_str("</testsuite>");
        let mut budget = Budget::for_a_report();
        let (results, full) = parse_within(&xml, &mut budget)?;
        assert!(full);
        assert_eq!(results.len(), 100_000);
        assert_eq!(budget.results, 0);
        // The bytes bind too: a few results with long messages.
        let mut budget = Budget { results: 1000, bytes: 40 << 10 };
        let long = "x".repeat(MAX_MESSAGE);
        let xml = format!(
            "<testsuite name=\"s\">{}</testsuite>",
            (0..10)
                .map(|i| format!("<testcase name=\"t{i}\"><failure message=\"{long}\"/></testcase>"))
                .collect::<String>()
        );
        let (results, full) = parse_within(&xml, &mut budget)?;
        assert!(full);
        assert_eq!(results.len(), 2);
        // Within the budget, nothing is cut.
        let (results, full) =
            parse_within("<testsuite name=\"s\"><testcase name=\"a\"/></testsuite>", &mut Budget::for_a_report())?;
        assert_eq!((results.len(), full), (1, false));
        Ok(())
    }

    #[test]
    fn reads_the_common_shape() -> TestResult {
        let xml = r#"<?xml version="1.0"?>
<testsuites><testsuite name="pkg" tests="4">
  <testcase classname="pkg.A" name="ok" time="0.5"/>
  <testcase classname="pkg.A" name="bad" time="1,200.25"><failure message="expected 1 &amp; got 2">trace &lt;here&gt;</failure></testcase>
  <testcase name="skip" time="4.5e-05"><skipped/><system-out>noise</system-out></testcase>
  <testcase name="flaky" status="run"><flakyFailure message="once">x</flakyFailure></testcase>
  <error message="setup failed"/>
</testsuite></testsuites>"#;
        let r = parse(xml)?;
        assert_eq!(r.len(), 5);
        assert_eq!((r[0].suite.as_str(), r[0].result, r[0].duration_ms), ("pkg.A", TestOutcome::Passed, Some(500)));
        assert_eq!((r[1].result, r[1].duration_ms), (TestOutcome::Failed, Some(1_200_250)));
        assert_eq!(r[1].message.as_deref(), Some("expected 1 & got 2\ntrace <here>"));
        assert_eq!((r[2].suite.as_str(), r[2].result, r[2].message.as_deref()), ("pkg", TestOutcome::Skipped, None));
        assert_eq!(r[3].result, TestOutcome::Passed, "a flaky test that passed on rerun passed");
        assert_eq!((r[4].name.as_str(), r[4].result), (SUITE_LEVEL, TestOutcome::Error));
        Ok(())
    }

    #[test]
    fn gtest_skip_is_skipped_and_names_keep_their_spaces() -> TestResult {
        let xml = r#"<testsuites><testsuite name="Math">
  <testcase name="Skips" status="run" result="skipped" time="0" classname="Math"><skipped message="not today"/></testcase>
  <testcase name="SkipsBare" status="run" result="skipped" time="0" classname="Math"/>
  <testcase name="Disabled" status="notrun" result="suppressed" time="0" classname="Math"/>
  <testcase name="Runs" status="run" result="completed" time="0.001" classname="Math"/>
  <testcase name="  padded name " classname=" Spaced "/>
</testsuite></testsuites>"#;
        let r = parse(xml)?;
        let outcome = |n: &str| r.iter().find(|t| t.name == n).map(|t| t.result);
        assert_eq!(outcome("Skips"), Some(TestOutcome::Skipped));
        assert_eq!(outcome("SkipsBare"), Some(TestOutcome::Skipped), "GTEST_SKIP without a <skipped> element");
        assert_eq!(outcome("Disabled"), Some(TestOutcome::Skipped));
        assert_eq!(outcome("Runs"), Some(TestOutcome::Passed));
        let padded = r.iter().find(|t| t.name.contains("padded")).ok_or("missing")?;
        assert_eq!((padded.name.as_str(), padded.suite.as_str()), ("  padded name ", " Spaced "));
        Ok(())
    }

    #[test]
    fn unreadable_files_are_problems_not_notes() -> TestResult {
        let dir = std::env::temp_dir().join(format!("tbox-junit-collect-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("out"))?;
        std::fs::write(dir.join("out/good.xml"), r#"<testsuite name="s"><testcase name="t"/></testsuite>"#)?;
        std::fs::write(dir.join("out/cut.xml"), r#"<testsuite name="s"><testcase name="t"#)?;
        std::fs::write(dir.join("out/dtd.xml"), "<!DOCTYPE x [<!ENTITY a \"b\">]><testsuite/>")?;
        let found = collect(&dir, &["out/*.xml".to_owned()], None, &mut Budget::for_a_report());
        assert_eq!((found.matched, found.results.len()), (3, 1));
        assert_eq!(found.problems.len(), 2, "{:?}", found.problems);
        assert!(
            found.problems.iter().any(|p| p.contains("cut.xml"))
                && found.problems.iter().any(|p| p.contains("dtd.xml"))
        );
        let none = collect(&dir, &["nothing/*.xml".to_owned()], None, &mut Budget::for_a_report());
        assert_eq!((none.matched, none.problems.len()), (0, 0));
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }

    #[test]
    fn refuses_entities_and_truncation() {
        let xxe =
            r#"<?xml version="1.0"?><!DOCTYPE r [<!ENTITY % x SYSTEM "http://example.invalid/">%x;]><r>&oob;</r>"#;
        assert!(parse(xxe).is_err());
        assert!(parse("<testsuite><testcase name=\"a\">").is_err());
        assert!(parse("").is_err());
    }

    /// Every file in ../shared/fixtures/junit parses as its README says it should.
    #[test]
    fn shared_fixtures_parse() -> TestResult {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/junit");
        let readme = dir.join("../README.md");
        if !dir.is_dir() || !readme.is_file() {
            let _ = std::io::Write::write_all(
                &mut std::io::stderr(),
                b"SKIPPED JUnit corpus test: ../shared/fixtures/junit is not here\n",
            );
            return Ok(());
        }
        let readme = std::fs::read_to_string(readme)?;
        let mut checked = 0;
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            let file = path.file_name().and_then(|f| f.to_str()).unwrap_or_default().to_owned();
            let Some(line) = readme.lines().find(|l| l.contains(&format!("`junit/{file}`"))) else {
                continue;
            };
            let text = String::from_utf8_lossy(&std::fs::read(&path)?).into_owned();
            let parsed = parse(&text);
            if line.contains("[does not parse") {
                assert!(parsed.is_err(), "{file} should be refused");
                checked += 1;
                continue;
            }
            let results = parsed.map_err(|e| format!("{file}: {e}"))?;
            let counts = expected_counts(line).ok_or(format!("no counts for {file}"))?;
            let cases: Vec<_> = results.iter().filter(|t| t.name != SUITE_LEVEL).collect();
            assert_eq!(cases.len(), counts.0, "{file}: testcases");
            let bad = cases.iter().filter(|t| matches!(t.result, TestOutcome::Failed | TestOutcome::Error)).count();
            assert!(
                bad >= counts.1.max(counts.2) && bad <= counts.1 + counts.2 + 1,
                "{file}: {bad} failed or errored, README says {} with failure, {} with error",
                counts.1,
                counts.2
            );
            for t in &results {
                assert!(!t.name.is_empty() && !t.name.chars().any(char::is_control), "{file}: name {:?}", t.name);
            }
            checked += 1;
        }
        assert!(checked >= 30, "only {checked} fixtures checked");
        Ok(())
    }

    /// "(N testcases: F with failure, E with error, S skipped" from a README line.
    fn expected_counts(line: &str) -> Option<(usize, usize, usize)> {
        let tail = &line[line.find(" testcases: ")?.saturating_sub(8)..];
        let nums: Vec<usize> = tail
            .split(|c: char| !c.is_ascii_digit())
            .filter(|s| !s.is_empty())
            .filter_map(|s| s.parse().ok())
            .collect();
        Some((*nums.first()?, *nums.get(1)?, *nums.get(2)?))
    }
}
