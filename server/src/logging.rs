//! The server's log: env_logger (`RUST_LOG`, default `info`; `serve --log-format json` writes
//! one JSON object per line), with two corrections.
//!
//! actix-http logs a request it cannot parse (a bad header, garbage instead of HTTP) at ERROR,
//! as "stream error: request parse error: …". That is the client's mistake, answered with a
//! 400, and anyone on the internet can fill an operator's error log with it; here such lines
//! are logged at DEBUG instead, so ERROR keeps meaning "something is wrong with the server".
//!
//! And a warning or error said again is counted, not repeated: while the database is away every
//! request and every background thread says so, and a 10 s outage wrote 106 identical lines.
//! The first is logged; the same line within [`WINDOW`] is counted, and said once with its count
//! when the window ends.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use log::{Level, Log, Metadata, Record};

/// How long a repeated warning or error is only counted.
pub const WINDOW: Duration = Duration::from_secs(60);

struct Demoting {
    inner: env_logger::Logger,
    repeats: Repeats,
}

/// A line: its level, target and text.
type Line = (Level, String, String);

/// Warnings and errors seen lately: line → (first logged, times since).
#[derive(Default)]
pub struct Repeats(Mutex<HashMap<Line, (Instant, u64)>>);

/// What to do with a line.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Log it.
    Log,
    /// Count it: the same was logged within the window.
    Count,
}

impl Repeats {
    /// Whether to log this line now; and the summaries of lines whose window has ended
    /// (level, target, "TEXT (N more times in the last S s)").
    pub fn judge(&self, level: Level, target: &str, text: &str, now: Instant) -> (Verdict, Vec<Line>) {
        let mut seen = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let summaries = Self::expire(&mut seen, now);
        let key = (level, target.to_owned(), text.to_owned());
        let verdict = match seen.get_mut(&key) {
            Some((_, n)) => {
                *n += 1;
                Verdict::Count
            }
            None => {
                // A flood of distinct lines must not grow this without bound.
                if seen.len() < 1000 {
                    seen.insert(key, (now, 0));
                }
                Verdict::Log
            }
        };
        (verdict, summaries)
    }

    /// The summaries of lines whose window has ended by `now` (for a periodic call).
    pub fn expired(&self, now: Instant) -> Vec<Line> {
        let mut seen = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        Self::expire(&mut seen, now)
    }

    fn expire(seen: &mut HashMap<Line, (Instant, u64)>, now: Instant) -> Vec<Line> {
        let mut out = Vec::new();
        seen.retain(|(level, target, text), (first, n)| {
            let over = now.duration_since(*first) >= WINDOW;
            if over && *n > 0 {
                let secs = now.duration_since(*first).as_secs();
                out.push((*level, target.clone(), format!("{text} ({n} more time(s) in the last {secs} s)")));
            }
            !over
        });
        out
    }
}

/// Whether a record is a client's unparseable request, logged by actix as an error.
fn client_caused(record: &Record<'_>) -> bool {
    record.level() == Level::Error
        && record.target().starts_with("actix_http::h1")
        && record.args().to_string().starts_with("stream error: request parse error")
}

impl Demoting {
    fn write(&self, level: Level, target: &str, text: &str) {
        self.inner.log(&Record::builder().args(format_args!("{text}")).level(level).target(target).build());
    }
}

impl Log for Demoting {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.inner.enabled(metadata)
    }

    fn log(&self, record: &Record<'_>) {
        if !client_caused(record) {
            if record.level() > Level::Warn || !self.inner.enabled(record.metadata()) {
                return self.inner.log(record);
            }
            let text = record.args().to_string();
            let (verdict, summaries) = self.repeats.judge(record.level(), record.target(), &text, Instant::now());
            for (level, target, line) in summaries {
                self.write(level, &target, &line);
            }
            if verdict == Verdict::Log {
                self.inner.log(record);
            }
            return;
        }
        let demoted = Record::builder()
            .args(*record.args())
            .level(Level::Debug)
            .target(record.target())
            .module_path(record.module_path())
            .file(record.file())
            .line(record.line())
            .build();
        if self.inner.enabled(demoted.metadata()) {
            self.inner.log(&demoted);
        }
    }

    fn flush(&self) {
        self.inner.flush();
    }
}

static LOGGER: std::sync::OnceLock<&'static Demoting> = std::sync::OnceLock::new();

/// Installs the logger; call once, first thing.
pub fn init(format: crate::cli::LogFormat) {
    let mut builder = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    if format == crate::cli::LogFormat::Json {
        builder.format(|buf, record| {
            use std::io::Write as _;
            let line = serde_json::json!({
                "time": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                "level": record.level().as_str(),
                "target": record.target(),
                "message": record.args().to_string(),
            });
            writeln!(buf, "{line}")
        });
    }
    let inner = builder.build();
    let max = inner.filter();
    let logger: &'static Demoting = Box::leak(Box::new(Demoting { inner, repeats: Repeats::default() }));
    if log::set_logger(logger).is_ok() {
        log::set_max_level(max);
        let _ = LOGGER.set(logger);
    }
}

/// Says the counts of repeated lines whose window has ended; call every second or so, so that
/// an outage's count is told even when nothing else is logged after it.
pub fn tick() {
    if let Some(logger) = LOGGER.get() {
        for (level, target, line) in logger.repeats.expired(Instant::now()) {
            logger.write(level, &target, &line);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_warning_is_said_once_then_counted() {
        let r = Repeats::default();
        let t0 = Instant::now();
        let said = |at: Duration, text: &str| r.judge(Level::Warn, "tbox", text, t0 + at);
        assert_eq!(said(Duration::ZERO, "database away"), (Verdict::Log, vec![]));
        for s in 1..=9 {
            assert_eq!(said(Duration::from_secs(s), "database away").0, Verdict::Count);
        }
        assert_eq!(said(Duration::from_secs(3), "another thing").0, Verdict::Log);
        // The window over: the count is said, and the next one is logged again.
        let (verdict, summaries) = said(Duration::from_secs(61), "database away");
        assert_eq!(verdict, Verdict::Log);
        assert_eq!(
            summaries,
            vec![(Level::Warn, "tbox".into(), "database away (9 more time(s) in the last 61 s)".into())]
        );
        // Said once and never again: no summary.
        assert!(r.expired(t0 + Duration::from_secs(200)).iter().all(|(_, _, l)| !l.contains("another thing")));
    }
}
