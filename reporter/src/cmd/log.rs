//! `tbox-report log`: what this machine built, from its own record (`history.rs`), newest last.

use chrono::Local;

use crate::cli::LogArgs;
use crate::client::printable;
use crate::{exit, history};

pub fn run(args: &LogArgs) -> anyhow::Result<u8> {
    let all = history::entries();
    let mine: Vec<&history::Entry> =
        all.iter().filter(|e| args.project.as_ref().is_none_or(|p| *p == e.project)).collect();
    let shown = if args.last == 0 { &mine[..] } else { &mine[mine.len().saturating_sub(args.last)..] };
    if args.json {
        for e in shown {
            crate::say!("{}", serde_json::to_string(e)?);
        }
        return Ok(exit::OK);
    }
    if shown.is_empty() {
        let what = args.project.as_ref().map_or("anything".to_owned(), |p| format!("{p:?}"));
        crate::say!("this machine has not built {what} yet (or not since its record began)");
        return Ok(exit::OK);
    }
    crate::say!(
        "{:<16}  {:<20}  {:<8}  {:>8}  {:<13}  {:<8}  LINK",
        "FINISHED",
        "PROJECT",
        "REQUEST",
        "TOOK",
        "RESULT",
        "REPORT"
    );
    for e in shown {
        let request = e.request.map_or_else(|| "-".to_owned(), |r| format!("#{r}"));
        // The server's page, or where it went when there is none yet.
        let link = e.url.clone().unwrap_or_else(|| format!("({})", e.server));
        crate::say!(
            "{:<16}  {:<20}  {:<8}  {:>8}  {:<13}  {:<8}  {}",
            e.finished_at.with_timezone(&Local).format("%Y-%m-%d %H:%M"),
            printable(&e.project),
            request,
            took(e.seconds()),
            printable(&e.result),
            printable(&e.report),
            printable(&link),
        );
    }
    Ok(exit::OK)
}

/// `45s`, `12m05s`, `2h03m`.
fn took(s: i64) -> String {
    match (s / 3600, s / 60 % 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, s) => format!("{m}m{s:02}s"),
        (h, m, _) => format!("{h}h{m:02}m"),
    }
}
