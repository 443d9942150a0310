//! Pagination cursors come back from clients in `?after=`: decoding must refuse junk without
//! panicking, and any cursor it accepts, or the server makes, must encode and decode to itself.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tbox_server::db::builds::Cursor;

fn round_trips(c: Cursor) {
    let token = c.encode();
    assert!(token.bytes().all(|b| b.is_ascii_digit() || b == b'.' || b == b'-'), "not URL-safe: {token:?}");
    assert_eq!(Cursor::decode(&token), Some(c), "token {token:?}");
}

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data)
        && let Some(c) = Cursor::decode(s)
    {
        round_trips(c);
    }
    // The same bytes as a cursor the server could make: microsecond times (as stored, see
    // `db::to_db_time`) in the years a database holds, any id.
    if let (Some(micros), Some(id)) = (data.get(..8), data.get(8..16)) {
        let micros = i64::from_le_bytes(micros.try_into().unwrap_or_default());
        let id = i64::from_le_bytes(id.try_into().unwrap_or_default());
        if let Some(t) = chrono::DateTime::from_timestamp_micros(micros) {
            use chrono::Datelike as _;
            if (1..=9999).contains(&t.year()) {
                round_trips(Cursor { started_at: t.naive_utc(), id });
            }
        }
    }
});
