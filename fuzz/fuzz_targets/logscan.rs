//! The server scans every log a volunteer sends to build its brief view. Whatever the bytes,
//! the scan must not panic, and the brief must be a faithful, bounded excerpt: never more
//! lines than the log had, line numbers in order and in range, each line's kind what
//! `classify` says, blocks apart from each other, and the same answer however the reader
//! happens to split its reads.

#![no_main]

use std::io::BufReader;

use libfuzzer_sys::fuzz_target;
use tbox_server::logscan::{AFTER, BEFORE, Kind, classify, scan};

// Private limits in logscan.rs, repeated here; a change there shows up as a failure here.
const MAX_BLOCKS: usize = 40;
const MAX_LINES: usize = 2000;
const MAX_LINE: usize = 2000;

fuzz_target!(|data: &[u8]| {
    // Colour codes around a line do not change what it is. (One line: the whole input at once
    // would spend the time in the regex engine on a text `scan` never classifies.)
    let text = String::from_utf8_lossy(data);
    let line = text.lines().next().unwrap_or_default();
    assert_eq!(classify(&format!("\x1b[1;31m{line}\x1b[0m")), classify(line), "colour changed the kind");

    let brief = scan(data).unwrap_or_else(|e| panic!("reading a slice failed: {e}"));
    let capacity = 1 + usize::from(data.first().copied().unwrap_or(0) % 8);
    let chunked = scan(BufReader::with_capacity(capacity, data)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(format!("{chunked:?}"), format!("{brief:?}"), "the brief depends on read sizes");

    let newlines = data.iter().filter(|&&b| b == b'\n').count();
    let lines = newlines + usize::from(!data.is_empty() && !data.ends_with(b"\n"));
    assert_eq!(brief.total_lines, lines as u64, "line count");
    assert!(brief.errors + brief.warnings <= brief.total_lines);
    assert!(brief.blocks.len() <= MAX_BLOCKS, "{} blocks", brief.blocks.len());

    let shown: Vec<_> = brief.blocks.iter().flat_map(|b| &b.lines).collect();
    assert!(shown.len() as u64 <= brief.total_lines, "{} lines shown of {}", shown.len(), brief.total_lines);
    assert!(shown.len() <= MAX_LINES + BEFORE + AFTER, "{} lines shown", shown.len());
    assert!(shown.windows(2).all(|w| w[0].number < w[1].number), "line numbers out of order");
    assert!(shown.iter().all(|l| (1..=brief.total_lines).contains(&l.number)), "line number out of range");
    for l in &shown {
        assert_eq!(classify(&l.text), l.kind, "line {} {:?}", l.number, l.text);
        assert!(l.text.len() <= MAX_LINE + " …".len(), "line {} is {} bytes", l.number, l.text.len());
    }
    for pair in brief.blocks.windows(2) {
        let (Some(end), Some(start)) = (pair[0].lines.last(), pair[1].lines.first()) else {
            panic!("an empty block");
        };
        assert!(start.number > end.number + 1, "blocks {} and {} touch: they should be one", end.number, start.number);
    }

    let has = |kind: Kind| brief.blocks.iter().all(|b| b.lines.iter().any(|l| l.kind == kind));
    match brief.showing {
        "errors" => {
            assert!(brief.errors > 0 && has(Kind::Error));
            assert!(brief.omitted <= brief.errors);
        }
        "warnings" => {
            assert!(brief.errors == 0 && brief.warnings > 0 && has(Kind::Warning));
            assert!(brief.omitted <= brief.warnings);
        }
        "tail" => {
            assert_eq!((brief.errors, brief.warnings, brief.omitted), (0, 0, 0));
            let want = (brief.total_lines.saturating_sub(BEFORE as u64) + 1)..=brief.total_lines;
            assert!(shown.iter().map(|l| l.number).eq(want), "the tail is not the last {BEFORE} lines");
        }
        other => panic!("showing {other:?}"),
    }
});
