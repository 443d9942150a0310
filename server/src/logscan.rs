//! The brief view of a log: the error (or, failing that, warning) lines with the context a
//! reader needs, found in one streaming pass so a 50 MB log never sits in memory whole.
//!
//! Context follows Tinderbox: 30 lines before a hit, 5 after. Patterns cover what real build
//! logs say when they fail: gcc/clang and rustc diagnostics, make and ninja, CMake, javac and
//! Maven, Go tests and builds, Python tracebacks, test harness failures, linkers, timeouts.

use std::collections::VecDeque;
use std::io::BufRead;
use std::sync::LazyLock;

use regex::Regex;
use serde::Serialize;

/// Lines shown before a hit.
pub const BEFORE: usize = 30;
/// Lines shown after a hit.
pub const AFTER: usize = 5;
/// Most blocks kept; further hits are only counted.
const MAX_BLOCKS: usize = 40;
/// Most lines in a brief, all blocks together.
const MAX_LINES: usize = 2000;
/// Longest line kept, in bytes.
const MAX_LINE: usize = 2000;

/// Compiles a pattern with ASCII word boundaries: the keywords are English, and a Unicode `\b`
/// sends every line with a non-ASCII byte to the regex crate's slow engine (a 4 MB log in
/// German or Japanese took 1.8 s to scan; the fuzzer managed 91 small logs a second).
fn pattern(re: &str) -> Regex {
    Regex::new(&re.replace(r"\b", r"(?-u:\b)")).unwrap_or_else(|e| panic!("log pattern {re:?}: {e}"))
}

static ERROR: LazyLock<Regex> = LazyLock::new(|| {
    pattern(concat!(
        // "file:1:2: error:", "error[E0308]:", "  error: …", "ld: error:", "- error:"; not
        // "Unknown error:" inside a quoted message.
        r"(?:^|[:\]\)>|-])\s*(?i:fatal\s+)?(?i:error)(?:\[[A-Za-z]*\d+\])?:(?:\s|$)",
        r"|\[ERROR\]|\bBUILD FAILURE\b|\bBUILD FAILED\b|\bFAILED\b|\bFAIL\b|--- FAIL:",
        r"|\bCMake Error\b|\*\*\* \[.*\] Error \d+|\*\*\*.*Error \d+|make(?:\[\d+\])?: \*\*\*",
        r"|Traceback \(most recent call last\)|\b[A-Z][A-Za-z0-9_.]*(?:Error|Exception): ",
        r"|\bpanic: |\[build failed\]|\[setup failed\]|\bundefined reference to\b|\bundefined: ",
        r"|\blinking with .* failed|\bSegmentation fault\b|\bcore dumped\b|\bAssertion .* failed",
        r"|TEST-UNEXPECTED-|\[taskcluster:error\]|\bAborted\b|\btimed out\b|\bexited with (?:code|status) [1-9]",
        r"|\bcannot find\b|\bNo such file or directory\b",
        // Go's race detector, the sanitizers (ASan, TSan, UBSan, LSan), Rust panics, pytest's
        // `E   ` lines, TAP, MSVC's `error C2065:` / `error LNK2019:`, Gradle.
        r"|^WARNING: DATA RACE\b|==\d+==ERROR: \w*Sanitizer|^SUMMARY: \w*Sanitizer|\bruntime error: ",
        r"|\bthread '[^']*'(?: \(\d+\))? panicked at\b|^E {3}|^not ok \d+|\berror [A-Z]{1,3}\d{3,5}\s*:",
        r"|\bFAILURE: Build failed\b",
        // git's own failures (a checkout), and what tbox-report says when it ends a step or
        // refuses a build.
        r"|^fatal: |^\[tbox-report\] (?:step ended: |error: |the step timed out|the step was killed|the step wrote \d+ bytes)",
        r"|^\[tbox-report\] this volunteer refused to build",
    ))
});

static WARNING: LazyLock<Regex> = LazyLock::new(|| {
    pattern(r"(?:^|[:\]\)>|-])\s*(?i:warning)(?:\[[\w-]+\])?:|\[WARNING\]|\bCMake Warning\b|\[deprecation\]")
});

static ANSI: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\x1b\[[0-9;?]*[ -/]*[@-~]").unwrap_or_else(|e| panic!("ansi pattern: {e}")));

/// What a line is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Error,
    Warning,
    Context,
}

/// One line of the brief.
#[derive(Debug, Clone, Serialize)]
pub struct Line {
    /// 1-based line number in the whole log.
    pub number: u64,
    pub text: String,
    pub kind: Kind,
}

/// A run of consecutive lines around one or more hits.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Block {
    pub lines: Vec<Line>,
}

/// The brief view of one log.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Brief {
    /// Blocks around error lines; around warnings when there are no errors; or the end of the
    /// log when neither was found.
    pub blocks: Vec<Block>,
    pub errors: u64,
    pub warnings: u64,
    pub total_lines: u64,
    /// What the blocks are about: "errors", "warnings" or "tail".
    pub showing: &'static str,
    /// Hits past the block limit (counted, not shown).
    pub omitted: u64,
}

/// Classifies one line (ANSI colour codes ignored).
pub fn classify(line: &str) -> Kind {
    let plain = ANSI.replace_all(line, "");
    if ERROR.is_match(&plain) {
        Kind::Error
    } else if WARNING.is_match(&plain) {
        Kind::Warning
    } else {
        Kind::Context
    }
}

/// Blocks being gathered for one kind of hit.
struct Gatherer {
    blocks: Vec<Block>,
    /// Lines in all blocks.
    lines: usize,
    /// Lines still to add after the last hit.
    after: usize,
    /// Number of the last line put in a block.
    last: u64,
    omitted: u64,
}

impl Gatherer {
    fn new() -> Self {
        Gatherer { blocks: Vec::new(), lines: 0, after: 0, last: 0, omitted: 0 }
    }

    fn hit(&mut self, ring: &VecDeque<Line>, line: &Line) {
        // Close enough to the last block that its "before" context reaches back into it.
        let continues = self.last > 0 && line.number <= self.last + 1 + BEFORE as u64;
        if self.lines >= MAX_LINES {
            self.omitted += 1;
            self.after = 0;
            return;
        }
        if !continues {
            if self.blocks.len() >= MAX_BLOCKS {
                self.omitted += 1;
                return;
            }
            self.blocks.push(Block::default());
        }
        if let Some(block) = self.blocks.last_mut() {
            let before = block.lines.len();
            block.lines.extend(ring.iter().filter(|l| l.number > self.last).cloned());
            block.lines.push(line.clone());
            self.lines += block.lines.len() - before;
            self.last = line.number;
            self.after = AFTER;
        }
    }

    fn context(&mut self, line: &Line) {
        if self.after > 0 {
            if let Some(block) = self.blocks.last_mut() {
                block.lines.push(line.clone());
                self.lines += 1;
                self.last = line.number;
            }
            self.after -= 1;
        }
    }
}

/// Reads a log once and returns its brief view.
pub fn scan(reader: impl BufRead) -> std::io::Result<Brief> {
    let mut ring: VecDeque<Line> = VecDeque::with_capacity(BEFORE + 1);
    let mut errors = Gatherer::new();
    let mut warnings = Gatherer::new();
    let mut brief = Brief::default();
    let mut reader = reader;
    let mut raw = Vec::new();
    loop {
        raw.clear();
        if reader.read_until(b'\n', &mut raw)? == 0 {
            break;
        }
        brief.total_lines += 1;
        let text = String::from_utf8_lossy(&raw);
        let text = text.trim_end_matches(['\n', '\r']);
        let text = ANSI.replace_all(text, "");
        let mut text = text.into_owned();
        if text.len() > MAX_LINE {
            let mut end = MAX_LINE;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
            text.push_str(" …");
        }
        let kind = classify(&text);
        let line = Line { number: brief.total_lines, text, kind };
        match kind {
            Kind::Error => {
                brief.errors += 1;
                errors.hit(&ring, &line);
                warnings.context(&line);
            }
            Kind::Warning => {
                brief.warnings += 1;
                warnings.hit(&ring, &line);
                errors.context(&line);
            }
            Kind::Context => {
                errors.context(&line);
                warnings.context(&line);
            }
        }
        if ring.len() == BEFORE {
            ring.pop_front();
        }
        ring.push_back(line);
    }
    (brief.blocks, brief.showing, brief.omitted) = if !errors.blocks.is_empty() {
        (errors.blocks, "errors", errors.omitted)
    } else if !warnings.blocks.is_empty() {
        (warnings.blocks, "warnings", warnings.omitted)
    } else {
        let tail = Block { lines: ring.into_iter().collect() };
        (if tail.lines.is_empty() { Vec::new() } else { vec![tail] }, "tail", 0)
    };
    Ok(brief)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn brief(text: &str) -> Brief {
        scan(text.as_bytes()).unwrap_or_default()
    }

    /// Logs of more toolchains, made here with the real tools (tests/data/logs/README.md): the
    /// first error line of each brief is the one a developer needs first.
    #[test]
    fn real_logs_of_more_toolchains() -> std::io::Result<()> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/logs");
        let expect: &[(&str, &str)] = &[
            ("gcc-asan-use-after-free.log", "ERROR: AddressSanitizer: heap-use-after-free"),
            ("gcc-ubsan-signed-overflow.log", "runtime error: signed integer overflow"),
            ("perl-prove-tap-not-ok.log", "not ok 3 - doubles nested lists"),
            ("cargo-test-panic.log", "test tests::words ... FAILED"),
            ("pytest-assertion-failed.log", "E       AssertionError: assert"),
            ("go-test-race.log", "WARNING: DATA RACE"),
            ("gradle-java-compile-failed.log", "error: incompatible types"),
        ];
        for (file, first) in expect {
            let b = scan(std::io::BufReader::new(std::fs::File::open(dir.join(file))?))?;
            assert_eq!(b.showing, "errors", "{file}");
            let first_error = b.blocks.iter().flat_map(|bl| bl.lines.iter()).find(|l| l.kind == Kind::Error);
            let text = first_error.map(|l| l.text.as_str()).unwrap_or("");
            assert!(text.contains(first), "{file}: first error {text:?}, wanted {first:?}");
        }
        // And the panic itself is in the cargo brief, not only the FAILED line.
        let b = scan(std::io::BufReader::new(std::fs::File::open(dir.join("cargo-test-panic.log"))?))?;
        assert!(
            b.blocks
                .iter()
                .flat_map(|bl| bl.lines.iter())
                .any(|l| l.kind == Kind::Error && l.text.contains("panicked at"))
        );
        // Gradle's own verdict is an error line too.
        let b = scan(std::io::BufReader::new(std::fs::File::open(dir.join("gradle-java-compile-failed.log"))?))?;
        assert!(
            b.blocks
                .iter()
                .flat_map(|bl| bl.lines.iter())
                .any(|l| l.kind == Kind::Error && l.text.starts_with("FAILURE: Build failed"))
        );
        Ok(())
    }

    #[test]
    fn failures_of_more_toolchains_are_errors() {
        for line in [
            "WARNING: DATA RACE",
            "==41877==ERROR: AddressSanitizer: heap-use-after-free on address 0x602000000010",
            "SUMMARY: AddressSanitizer: heap-use-after-free /src/main.c:9 in main",
            "src/parse.c:17:9: runtime error: signed integer overflow: 2147483647 + 1 cannot be represented",
            "thread 'parser::tests::empty' panicked at src/parser.rs:41:9:",
            "thread 'tests::words' (16581) panicked at src/lib.rs:2:69:",
            "FAILED tests/test_lexer.py::test_empty - AssertionError: assert 1 == 0",
            "E       assert 1 == 0",
            "not ok 3 - parses nested lists",
            "main.cpp(12): error C2065: 'x': undeclared identifier",
            "LINK : fatal error LNK1181: cannot open input file 'foo.lib'",
            "FAILURE: Build failed with an exception.",
            "fatal: detected dubious ownership in repository at '/srv/git/demo'",
            "[tbox-report] step ended: memory limit 4 GiB",
            "[tbox-report] the step timed out after 1800s; its whole process group was killed",
            "[tbox-report] this volunteer refused to build, and ran nothing:",
        ] {
            assert_eq!(classify(line), Kind::Error, "{line}");
        }
        for line in ["ok 2 - parses lists", "Everything fine", "  E is a letter", "WARNING: deprecated flag"] {
            assert_ne!(classify(line), Kind::Error, "{line}");
        }
    }

    #[test]
    fn finds_errors_with_context() {
        let mut log: String = (1..=100).map(|i| format!("compiling unit {i}\n")).collect();
        log.push_str("src/a.c:10:5: error: expected ';' before '}' token\n");
        log.push_str("make: *** [Makefile:12: a.o] Error 1\n");
        log.extend((1..=20).map(|i| format!("after {i}\n")));
        let b = brief(&log);
        assert_eq!((b.errors, b.total_lines, b.showing), (2, 122, "errors"));
        assert_eq!(b.blocks.len(), 1);
        let lines = &b.blocks[0].lines;
        assert_eq!(lines.first().map(|l| l.number), Some(71), "30 lines before");
        assert_eq!(lines.last().map(|l| l.number), Some(107), "5 lines after the last hit");
        assert_eq!(lines.iter().filter(|l| l.kind == Kind::Error).count(), 2);
    }

    #[test]
    fn warnings_when_no_errors_and_tail_when_nothing() {
        let b = brief("a\nfoo.c:1:2: warning: unused variable 'x' [-Wunused-variable]\nb\n");
        assert_eq!((b.showing, b.warnings), ("warnings", 1));
        let b = brief("just\nsome\noutput\n");
        assert_eq!((b.showing, b.blocks[0].lines.len()), ("tail", 3));
        assert!(brief("").blocks.is_empty());
    }

    #[test]
    fn lines_in_other_scripts_are_read_alike() {
        assert_eq!(classify("Überprüfung: größe.c:3:1: error: ungültig"), Kind::Error);
        assert_eq!(classify("日本語 BUILD FAILED 日本語"), Kind::Error);
        assert_eq!(classify("λ.rs:1:1: warning: unused"), Kind::Warning);
        assert_eq!(classify("Ärger ohne Fehlerwort ✓"), Kind::Context);
        // A keyword inside a longer word is not one, in any script.
        assert_eq!(classify("UNFAILED_OK"), Kind::Context);
    }

    #[test]
    fn ansi_colours_are_stripped() {
        let b = brief("\x1b[1;31m[ERROR]\x1b[m Failed to execute goal\n");
        assert_eq!(b.errors, 1);
        assert_eq!(b.blocks[0].lines[0].text, "[ERROR] Failed to execute goal");
    }

    #[test]
    fn many_hits_stay_bounded() {
        let filler = "filler\n".repeat(40);
        let log: String = (0..1000).map(|i| format!("x.c:{i}:1: error: bad\n{filler}")).collect();
        let b = brief(&log);
        assert_eq!(b.blocks.len(), MAX_BLOCKS);
        assert_eq!(b.errors, 1000);
        assert_eq!(b.omitted, 1000 - MAX_BLOCKS as u64);
        // Hits close together make one block, which still stops growing.
        let log = "y.c:1:1: error: bad\nfiller\n".repeat(50_000);
        let b = brief(&log);
        let lines: usize = b.blocks.iter().map(|bl| bl.lines.len()).sum();
        assert!(lines <= MAX_LINES + BEFORE + AFTER, "{lines} lines");
        assert!(b.omitted > 0);
    }

    /// A 50 MB log streams through: the brief holds its error and context, nothing else.
    #[test]
    fn fifty_megabytes_stream_through() -> std::io::Result<()> {
        struct Generated {
            line: u64,
            lines: u64,
            pending: Vec<u8>,
        }
        impl std::io::Read for Generated {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                if self.pending.is_empty() {
                    if self.line == self.lines {
                        return Ok(0);
                    }
                    self.line += 1;
                    self.pending = if self.line == self.lines / 2 {
                        b"src/deep.c:9:1: error: the one error in the middle\n".to_vec()
                    } else {
                        format!("compiling object number {:>12} with some flags\n", self.line).into_bytes()
                    };
                }
                let n = buf.len().min(self.pending.len());
                buf[..n].copy_from_slice(&self.pending[..n]);
                self.pending.drain(..n);
                Ok(n)
            }
        }
        let lines = 50_000_000 / 50;
        let b = scan(std::io::BufReader::new(Generated { line: 0, lines, pending: Vec::new() }))?;
        assert_eq!((b.total_lines, b.errors, b.showing), (lines, 1, "errors"));
        assert_eq!(b.blocks[0].lines.len(), BEFORE + 1 + AFTER);
        Ok(())
    }

    /// The real logs in ../shared/fixtures/logs: each failing log's brief shows its failure.
    #[test]
    fn shared_fixture_logs() -> std::io::Result<()> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/logs");
        if !dir.is_dir() {
            let _ = std::io::Write::write_all(
                &mut std::io::stderr(),
                b"SKIPPED log corpus test: ../shared/fixtures/logs is not here\n",
            );
            return Ok(());
        }
        let expect: &[(&str, &str, &str)] = &[
            ("go-test-build-failed.log", "errors", "undefined: x"),
            ("go-test-verbose-gotestsum.log", "errors", "--- FAIL"),
            ("python-wpt-harness-tracebacks-excerpt.log", "errors", "Traceback (most recent call last)"),
            ("cargo-rustc-firefox-win64-link-failure-excerpt.log", "errors", "error: linking with"),
            ("mozharness-taskcluster-max-runtime-aborted.log", "errors", "TEST-UNEXPECTED-TIMEOUT"),
            ("buildbot-macosx64-debug-steps-excerpt.log", "errors", "TEST-UNEXPECTED-FAIL"),
            ("cargo-clippy-warnings.log", "errors", "error: using `clone` on a double-reference"),
            ("make-gcc-daos-centos7.log", "warnings", "warning: ignoring return value"),
            ("gradle-geckoview-android-build-tail-excerpt.log", "warnings", "warning:"),
            ("maven-javac-deprecation-warnings.log", "errors", "error: binary operator expected"),
            ("maven-errorprone-warnings.log", "warnings", "[WARNING]"),
            ("ninja-gcc-qt-warnings.log", "warnings", "warning:"),
            ("cmake-ninja-configure-build.log", "warnings", "CMake Warning"),
        ];
        for (file, showing, needle) in expect {
            let f = std::fs::File::open(dir.join(file))?;
            let b = scan(std::io::BufReader::new(f))?;
            assert_eq!(b.showing, *showing, "{file}");
            let shown: Vec<&str> = b.blocks.iter().flat_map(|bl| bl.lines.iter()).map(|l| l.text.as_str()).collect();
            assert!(shown.iter().any(|l| l.contains(needle)), "{file}: {needle:?} not in the brief");
            let lines: usize = b.blocks.iter().map(|bl| bl.lines.len()).sum();
            assert!(lines <= MAX_BLOCKS * (BEFORE + AFTER + 200), "{file}: brief too long ({lines} lines)");
        }
        // MSVC's linker in a real Visual Studio build (captured through Maven's exec plugin, and
        // pasted into a Jenkins report): its errors are error lines, whatever the prefix.
        let text = std::fs::read_to_string(dir.join("maven-javac-deprecation-warnings.log"))?;
        for needle in [
            "fatal error LNK1181: cannot open input file",
            "error LNK2001: unresolved external symbol",
            "fatal error LNK1120",
        ] {
            let line = text.lines().find(|l| l.contains(needle)).unwrap_or_default();
            assert_eq!(classify(line), Kind::Error, "{line:?}");
        }
        // Every fixture scans without trouble and the line count is right.
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            let bytes = std::fs::read(&path)?;
            let b = scan(bytes.as_slice())?;
            let newlines = bytes.iter().filter(|&&c| c == b'\n').count() as u64;
            assert!(b.total_lines == newlines || b.total_lines == newlines + 1, "{}", path.display());
        }
        Ok(())
    }
}
