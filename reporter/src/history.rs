//! What this machine built, kept on the volunteer's own disk (`tbox-report log`, and the last
//! build in `tbox-report status`): one JSON line per finished report, whatever became of it
//! (sent, spooled, refused, lost), so that a volunteer can see what ran here without asking
//! any server. Rotated: past [`ROTATE_AT`] bytes the file becomes `builds.1.jsonl` (the one
//! before that is dropped), so it never grows without end.

use std::io::Write as _;
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tbox_protocol::Report;

use crate::config;

/// Size past which the record is rotated: some 4,000 builds.
pub const ROTATE_AT: u64 = 1 << 20;

/// One build, as this machine saw it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Entry {
    /// The build's id (the report's `uuid`), to update its fate when a spooled report goes.
    #[serde(default)]
    pub uuid: String,
    pub finished_at: DateTime<Utc>,
    pub started_at: DateTime<Utc>,
    pub project: String,
    pub server: String,
    pub builder: String,
    pub branch: String,
    pub revision: String,
    pub result: String,
    /// The build request this build answered, if a lease asked for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<u64>,
    /// `sent`, `spooled`, `refused` (by the server) or `lost` (neither sent nor spooled).
    pub report: String,
    /// The build's page, once the server has it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

impl Entry {
    /// The entry for a finished report, before its fate is known.
    pub fn of(report: &Report, server: &str, request: Option<u64>) -> Entry {
        let finished = report.finished_at.map(|t| t.with_timezone(&Utc)).unwrap_or_else(Utc::now);
        Entry {
            uuid: report.uuid.clone(),
            finished_at: finished,
            started_at: report.started_at.with_timezone(&Utc),
            project: report.project.clone(),
            server: server.to_owned(),
            builder: report.builder.clone(),
            branch: report.branch.clone(),
            revision: report.revision.clone(),
            result: report.result.map_or("unknown", |r| r.as_str()).to_owned(),
            request,
            lease: report.lease,
            report: String::new(),
            url: None,
        }
    }

    /// How long the build took.
    pub fn seconds(&self) -> i64 {
        (self.finished_at - self.started_at).num_seconds().max(0)
    }
}

fn file() -> PathBuf {
    config::state_dir().join("builds.jsonl")
}

fn rotated() -> PathBuf {
    config::state_dir().join("builds.1.jsonl")
}

/// Adds an entry. Best effort: a full disk must not turn a delivered build into an error, so
/// trouble is said, not returned.
pub fn record(entry: &Entry) {
    match serde_json::to_vec(entry) {
        Ok(line) => append(&line),
        Err(e) => eprintln!("tbox-report: could not record this build: {e}"),
    }
}

/// A spooled report has reached its server: its entry says so from now on (a line of its own,
/// applied when the record is read).
pub fn delivered(body: &[u8], url: Option<&str>) {
    let Some(uuid) =
        serde_json::from_slice::<serde_json::Value>(body).ok().and_then(|v| v["uuid"].as_str().map(str::to_owned))
    else {
        return;
    };
    let line = serde_json::json!({ "delivered": uuid, "url": url.map(crate::client::printable) });
    append(line.to_string().as_bytes());
}

fn append(line: &[u8]) {
    let path = file();
    let result = (|| -> std::io::Result<()> {
        std::fs::create_dir_all(config::state_dir())?;
        if std::fs::metadata(&path).is_ok_and(|m| m.len() >= ROTATE_AT) {
            std::fs::rename(&path, rotated())?;
        }
        let mut line = line.to_vec();
        line.push(b'\n');
        // One write of one line in append mode: two processes never interleave within it.
        std::fs::OpenOptions::new().create(true).append(true).open(&path)?.write_all(&line)
    })();
    if let Err(e) = result {
        eprintln!("tbox-report: could not add this build to {}: {e}", path.display());
    }
}

/// Every entry kept, oldest first. Lines that do not read (a torn write, an older format) are
/// skipped.
pub fn entries() -> Vec<Entry> {
    // Read as bytes: one damaged byte must not hide the whole record.
    let mut out: Vec<Entry> = Vec::new();
    for bytes in [rotated(), file()].iter().filter_map(|p| std::fs::read(p).ok()) {
        for line in bytes.split(|b| *b == b'\n') {
            if let Ok(e) = serde_json::from_slice::<Entry>(line) {
                out.push(e);
            } else if let Ok(Delivered { delivered, url }) = serde_json::from_slice(line)
                && let Some(e) = out.iter_mut().rev().find(|e| !e.uuid.is_empty() && e.uuid == delivered)
            {
                e.report = "sent".into();
                e.url = url;
            }
        }
    }
    out
}

/// The line [`delivered`] writes.
#[derive(Deserialize)]
struct Delivered {
    delivered: String,
    url: Option<String>,
}

/// The last entry of a project on a server.
pub fn last(project: &str, server: &str) -> Option<Entry> {
    entries().into_iter().rev().find(|e| e.project == project && e.server == server)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_bad_lines_are_skipped() -> anyhow::Result<()> {
        let now = Utc::now();
        let e = Entry {
            uuid: "u".into(),
            finished_at: now,
            started_at: now - chrono::TimeDelta::seconds(90),
            project: "demo".into(),
            server: "http://127.0.0.1:1".into(),
            builder: "b".into(),
            branch: "main".into(),
            revision: "abc".into(),
            result: "success".into(),
            request: Some(3),
            lease: Some(4),
            report: "sent".into(),
            url: None,
        };
        let line = serde_json::to_string(&e)?;
        let text = format!("{line}\n{{torn\n{line}\n");
        let read: Vec<Entry> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        assert_eq!(read, vec![e.clone(), e.clone()]);
        assert_eq!(e.seconds(), 90);
        Ok(())
    }
}
