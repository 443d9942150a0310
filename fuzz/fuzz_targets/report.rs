//! The server's first look at a volunteer's bytes: `parse_report` must refuse anything bad
//! without panicking, and whatever it accepts must survive being written out and read again
//! unchanged (the reporter serialises the same type, so a lossy field would show up here).

#![no_main]

use chrono::{DateTime, Utc};
use libfuzzer_sys::fuzz_target;
use tbox_protocol::{parse_report, report_id};

/// A fixed clock, so a crash found today still reproduces next year ("5 minutes in the future"
/// depends on it).
fn now() -> DateTime<Utc> {
    DateTime::from_timestamp(1_780_315_200, 0).unwrap_or_default() // 2026-06-01T12:00:00Z
}

fuzz_target!(|data: &[u8]| {
    assert_eq!(report_id(data).len(), 64);
    let Ok(report) = parse_report(data, now()) else {
        return;
    };
    let json = serde_json::to_vec(&report).unwrap_or_else(|e| panic!("an accepted report does not serialise: {e}"));
    match parse_report(&json, now()) {
        Ok(again) => assert_eq!(again, report, "the report changed on a round trip through JSON"),
        Err(e) => panic!("an accepted report, written out again, is refused: {e}\n{}", String::from_utf8_lossy(&json)),
    }
});
