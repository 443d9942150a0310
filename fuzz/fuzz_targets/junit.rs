//! The reporter reads JUnit XML that test runners on a volunteer's machine wrote; a hostile
//! or broken file must give an error, not a panic. What it returns goes into a report, so
//! every result must also pass the server's validation: a parser that produced a test the
//! server refuses would lose the whole build report.

#![no_main]

use chrono::{DateTime, Utc};
use libfuzzer_sys::fuzz_target;
use tbox_protocol::{BuildState, FORMAT, Report, parse_report};
use tbox_report::junit;

fn now() -> DateTime<Utc> {
    DateTime::from_timestamp(1_780_315_200, 0).unwrap_or_default() // 2026-06-01T12:00:00Z
}

fuzz_target!(|data: &[u8]| {
    // As `junit::collect` reads files: bytes that are not UTF-8 become U+FFFD.
    let xml = String::from_utf8_lossy(data);
    let Ok(tests) = junit::parse(&xml) else {
        return;
    };
    let report = Report {
        format: FORMAT.into(),
        uuid: "fuzz".into(),
        project: "fuzz".into(),
        builder: "fuzz".into(),
        state: BuildState::Started,
        result: None,
        branch: "main".into(),
        revision: "0".into(),
        started_at: now().fixed_offset(),
        finished_at: None,
        steps: Vec::new(),
        tests,
        properties: Default::default(),
        reporter: String::new(),
        recipe_version: None,
        recipe_key: None,
        sandbox: None,
        lease: None,
    };
    let json = serde_json::to_vec(&report).unwrap_or_else(|e| panic!("results do not serialise: {e}"));
    if let Err(e) = parse_report(&json, now()) {
        panic!("the server would refuse what the JUnit parser produced: {e}");
    }
});
