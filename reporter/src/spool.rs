//! Reports that could not be delivered wait here, one file each, until `flush` sends them.
//!
//! A spooled file holds the exact report bytes; it is signed again when sent (signing is
//! deterministic, and the server's idempotency makes a re-send after a lost answer harmless).

use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::client::{Client, Sent};

/// Writes a report atomically (temporary file, then rename); returns its path.
pub fn save(dir: &Path, body: &[u8]) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create spool {}", dir.display()))?;
    let now = chrono::Utc::now();
    // Sortable by name = oldest first.
    let name = format!("{}-{}.json", now.format("%Y%m%dT%H%M%S%.9fZ"), &tbox_protocol::report_id(body)[..16]);
    let tmp = dir.join(format!(".{name}.tmp"));
    {
        use std::io::Write as _;
        let mut f = std::fs::File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
        f.write_all(body)?;
        // On disk before it is visible under its final name: a crash leaves no empty report.
        f.sync_all()?;
    }
    let path = dir.join(name);
    std::fs::rename(&tmp, &path)?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(path)
}

/// Spooled reports, oldest first.
pub fn pending(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(Vec::new());
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json") && p.is_file())
        .filter(|p| !p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.')))
        .collect();
    files.sort();
    Ok(files)
}

/// What a flush did.
#[derive(Debug, Default)]
pub struct Flushed {
    pub delivered: usize,
    pub rejected: usize,
    /// Left in the spool because the server could not be reached.
    pub waiting: usize,
    pub last_error: Option<String>,
}

/// Sends every spooled report, oldest first. A rejected one is moved to `rejected/` with a
/// `.reason` file beside it; on the first unreachable answer the rest stay for next time.
pub fn flush(dir: &Path, client: &Client) -> anyhow::Result<Flushed> {
    let mut done = Flushed::default();
    if !dir.is_dir() {
        return Ok(done);
    }
    // One flusher at a time (runs of different projects share the spool); the others skip it.
    let lock = std::fs::File::create(dir.join(".lock")).with_context(|| format!("cannot lock {}", dir.display()))?;
    if lock.try_lock().is_err() {
        return Ok(done);
    }
    let files = pending(dir)?;
    for (i, path) in files.iter().enumerate() {
        let body = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        match client.submit(&body) {
            Sent::Delivered(_) => {
                std::fs::remove_file(path)?;
                done.delivered += 1;
            }
            Sent::Rejected { status, message } => {
                let aside = dir.join("rejected");
                std::fs::create_dir_all(&aside)?;
                let name = path.file_name().map(PathBuf::from).unwrap_or_default();
                std::fs::rename(path, aside.join(&name))?;
                std::fs::write(aside.join(name.with_extension("reason")), format!("HTTP {status}: {message}\n"))?;
                eprintln!(
                    "tbox-report: the server refused spooled report {} ({status}: {message}); moved to {}",
                    name.display(),
                    aside.display()
                );
                done.rejected += 1;
            }
            Sent::Unreachable(e) => {
                done.waiting = files.len() - i;
                done.last_error = Some(e);
                break;
            }
        }
    }
    Ok(done)
}
