//! Reports that could not be delivered wait here until `flush` sends them.
//!
//! Layout: each report is two files, `TIME-DIGEST.json` (the exact body bytes, as signed) and
//! `TIME-DIGEST.sig` (its base64 signature, the `Tbox-Signature` value), where TIME sorts
//! oldest first and DIGEST is the first 16 hex digits of the body's SHA-256 (its report id).
//! The report is signed once, when it is made, and sent unchanged from here: before sending,
//! `flush` checks that the body still matches the digest in its name and the signature this
//! builder's public key, so a bit flipped on disk is never delivered as genuine. A report that
//! fails the check is moved to `corrupt/` with a `.reason` file beside it; one the server
//! refuses goes to `rejected/`, likewise.
//!
//! Writing is atomic: both files are written under `.NAME.tmp` names, synced, and renamed, the
//! `.sig` first: a `.json` appears only with its signature beside it. A `.json` without a
//! `.sig` was spooled by an older tbox-report, which signed at sending time: it is checked
//! against the digest in its name and signed then. (After a key change, this is also how to
//! re-send intact reports set aside in `corrupt/` for their signature: move back the `.json`
//! alone.) Temporary files older than an hour, and `.sig` files whose `.json` is gone, are
//! leftovers of a crash and are removed by `save` and `flush`.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use tbox_protocol::PublicKey;

use crate::client::{Client, Sent};

/// A temporary file younger than this may belong to a writer at work: leave it.
const STALE: Duration = Duration::from_secs(3600);

/// Digits of the report id kept in a spooled report's name.
const DIGEST_LEN: usize = 16;

/// Reports one spool keeps at most: weeks of builds for a machine that builds every 15 minutes.
pub const MAX_WAITING: usize = 5000;

/// Writes a signed report atomically; returns the path of its `.json`. On failure nothing of
/// it is left behind.
pub fn save(dir: &Path, body: &[u8], signature: &str) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create spool {}", dir.display()))?;
    sweep(dir, STALE);
    // A server that keeps answering something else than a tbox server must not fill the disk
    // one report at a time.
    let waiting = pending(dir)?.len();
    if waiting >= MAX_WAITING {
        anyhow::bail!("the spool {} is full ({waiting} reports wait; `tbox-report flush` sends them)", dir.display());
    }
    let now = chrono::Utc::now();
    // Sortable by name = oldest first.
    let stem = format!("{}-{}", now.format("%Y%m%dT%H%M%S%.9fZ"), &tbox_protocol::report_id(body)[..DIGEST_LEN]);
    save_as(dir, &stem, body, signature)
}

/// [`save`] under a given name (without extension).
fn save_as(dir: &Path, stem: &str, body: &[u8], signature: &str) -> anyhow::Result<PathBuf> {
    let json = dir.join(format!("{stem}.json"));
    let sig = dir.join(format!("{stem}.sig"));
    let json_tmp = dir.join(format!(".{stem}.json.tmp"));
    let sig_tmp = dir.join(format!(".{stem}.sig.tmp"));
    let written = write_synced(&json_tmp, body)
        .and_then(|()| write_synced(&sig_tmp, format!("{signature}\n").as_bytes()))
        .and_then(|()| std::fs::rename(&sig_tmp, &sig))
        .and_then(|()| std::fs::rename(&json_tmp, &json));
    if let Err(e) = written {
        // A full disk must not also leave half a report lying in the spool.
        for leftover in [&json_tmp, &sig_tmp, &sig] {
            let _ = std::fs::remove_file(leftover);
        }
        return Err(e).with_context(|| format!("cannot write {}", json.display()));
    }
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(json)
}

/// On disk before it is visible under its final name: a crash leaves no empty report.
fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write as _;
    let mut f = std::fs::File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Removes what crashed writers and flushers left: `.*.tmp` files and `.sig` files without
/// their `.json`, when older than `age` (so that a concurrent writer's files are left alone).
pub fn sweep(dir: &Path, age: Duration) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let now = SystemTime::now();
    for path in entries.filter_map(Result::ok).map(|e| e.path()) {
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else { continue };
        let leftover = (name.starts_with('.') && name.ends_with(".tmp"))
            || (name.ends_with(".sig") && !path.with_extension("json").exists());
        let old = std::fs::symlink_metadata(&path)
            .and_then(|m| m.modified())
            .is_ok_and(|t| now.duration_since(t).is_ok_and(|d| d >= age));
        if leftover && old {
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// Spooled reports (their `.json`), oldest first.
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

/// Why a spooled report must not be sent, if it must not. `signature` is the content of its
/// `.sig`, or None for a report spooled before signatures were kept.
pub fn check(path: &Path, body: &[u8], signature: Option<&str>, key: &PublicKey) -> Result<(), String> {
    let id = tbox_protocol::report_id(body);
    let named = path
        .file_stem()
        .and_then(|s| s.to_str())
        .and_then(|s| s.rsplit_once('-'))
        .map(|(_, digest)| digest)
        .filter(|d| d.len() == DIGEST_LEN && d.bytes().all(|b| b.is_ascii_hexdigit()));
    let Some(named) = named else {
        return Err("its name does not end in the digest of its content (-<16 hex digits>.json)".into());
    };
    if !id.starts_with(&named.to_ascii_lowercase()) {
        return Err(format!(
            "its content changed after it was spooled: it hashes to {}…, its name says {named}…",
            &id[..DIGEST_LEN]
        ));
    }
    match signature {
        None => Ok(()),
        Some(sig) => key.verify(body, sig).map_err(|e| {
            format!("its signature does not verify with this builder's key ({e}): the .sig is damaged, or the key changed since it was spooled")
        }),
    }
}

/// What a flush did.
#[derive(Debug, Default)]
pub struct Flushed {
    pub delivered: usize,
    pub rejected: usize,
    /// Damaged: moved to `corrupt/`, not sent.
    pub corrupt: usize,
    /// Left in the spool because the server could not be reached (or something else answered).
    pub waiting: usize,
    /// Why the rest waits: a whole sentence, naming the server.
    pub last_error: Option<String>,
}

/// Sends every spooled report, oldest first, unchanged and with the signature it was spooled
/// with. A damaged one is moved to `corrupt/` and a refused one to `rejected/`, each with a
/// `.reason` file beside it; on the first unreachable (or not-tbox) answer the rest stay for
/// next time.
pub fn flush(dir: &Path, client: &Client) -> anyhow::Result<Flushed> {
    let client = &client.once();
    let mut done = Flushed::default();
    if !dir.is_dir() {
        return Ok(done);
    }
    // One flusher at a time (runs of different projects share the spool); the others skip it.
    let lock = std::fs::File::create(dir.join(".lock")).with_context(|| format!("cannot lock {}", dir.display()))?;
    if lock.try_lock().is_err() {
        return Ok(done);
    }
    sweep(dir, STALE);
    let key = client.public_key();
    let files = pending(dir)?;
    for (i, path) in files.iter().enumerate() {
        let body = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let sig_path = path.with_extension("sig");
        let stored = match std::fs::read_to_string(&sig_path) {
            Ok(s) => Some(s.trim().to_owned()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", sig_path.display())),
        };
        if let Err(why) = check(path, &body, stored.as_deref(), &key) {
            let aside = set_aside(path, "corrupt", &why)?;
            eprintln!(
                "tbox-report: spooled report {}{} is damaged: {why}; it was not sent, and is kept in {}",
                path.file_name().map(Path::new).unwrap_or(path).display(),
                describe(&body),
                aside.display()
            );
            done.corrupt += 1;
            continue;
        }
        // Spooled by an older tbox-report, which kept no signature: its name vouches for it.
        let signature = stored.unwrap_or_else(|| client.sign(&body));
        // Sent as the builder it names: one server's spool holds the reports of every name
        // this machine has there (a project may give another `builder`), all with one key.
        let named = serde_json::from_slice::<serde_json::Value>(&body).ok();
        let as_named = named.as_ref().and_then(|v| v["builder"].as_str()).map(|b| client.as_builder(b));
        match as_named.as_ref().unwrap_or(client).submit(&body, &signature) {
            Sent::Delivered(v) => {
                crate::history::delivered(&body, v["url"].as_str());
                std::fs::remove_file(path)?;
                let _ = std::fs::remove_file(&sig_path);
                done.delivered += 1;
            }
            Sent::Rejected { status, message } => {
                let aside = set_aside(path, "rejected", &format!("HTTP {status}: {message}"))?;
                eprintln!(
                    "tbox-report: the server refused spooled report {} ({status}: {message}); moved to {}",
                    path.file_name().map(Path::new).unwrap_or(path).display(),
                    aside.display()
                );
                done.rejected += 1;
            }
            Sent::Unreachable(e) => {
                done.waiting = files.len() - i;
                done.last_error = Some(format!("the server at {} could not be reached ({e})", client.base()));
                break;
            }
            Sent::NotTbox(e) => {
                done.waiting = files.len() - i;
                done.last_error = Some(e);
                break;
            }
        }
    }
    Ok(done)
}

/// " (build U, project P, revision R)" if the body still reads as a report, for messages.
fn describe(body: &[u8]) -> String {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else { return String::new() };
    let field = |k: &str| v[k].as_str().unwrap_or("?").to_owned();
    format!(" (build {}, project {}, revision {})", field("uuid"), field("project"), field("revision"))
}

/// Moves a spooled report (and its `.sig`) into the subdirectory `sub`, with a `.reason` file
/// saying why; returns that directory.
fn set_aside(path: &Path, sub: &str, why: &str) -> anyhow::Result<PathBuf> {
    let dir = path.parent().unwrap_or(Path::new(".")).join(sub);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let name = PathBuf::from(path.file_name().unwrap_or_default());
    std::fs::write(dir.join(name.with_extension("reason")), format!("{why}\n"))
        .with_context(|| format!("cannot write {}", dir.display()))?;
    let sig = path.with_extension("sig");
    if sig.exists() {
        std::fs::rename(&sig, dir.join(name.with_extension("sig")))?;
    }
    std::fs::rename(path, dir.join(&name)).with_context(|| format!("cannot move {}", path.display()))?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn scratch(name: &str) -> Result<PathBuf, io::Error> {
        let dir = std::env::temp_dir().join(format!("tbox-spool-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        Ok(dir)
    }

    fn names(dir: &Path) -> Result<Vec<String>, io::Error> {
        let mut v: Vec<String> = std::fs::read_dir(dir)?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<Result<_, _>>()?;
        v.sort();
        Ok(v)
    }

    #[test]
    fn a_full_disk_leaves_no_half_report_and_says_so() -> TestResult {
        if !Path::new("/dev/full").exists() {
            return Ok(());
        }
        let dir = scratch("full")?;
        // The body goes through; the disk is full by the time the signature is written.
        std::os::unix::fs::symlink("/dev/full", dir.join(".r-0123456789abcdef.sig.tmp"))?;
        let err = save_as(&dir, "r-0123456789abcdef", b"{}", "c2ln").err().ok_or("saving to /dev/full worked")?;
        assert!(format!("{err:#}").contains("No space left on device"), "{err:#}");
        assert_eq!(names(&dir)?, Vec::<String>::new(), "nothing left behind");
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }

    #[test]
    fn a_spool_below_a_file_fails_cleanly() -> TestResult {
        let dir = scratch("notdir")?;
        std::fs::write(dir.join("afile"), "")?;
        let err = save(&dir.join("afile/spool"), b"{}", "c2ln").err().ok_or("saving below a file worked")?;
        assert!(format!("{err:#}").contains("cannot create spool"), "{err:#}");
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }

    #[test]
    fn stale_leftovers_of_a_crash_are_swept_and_fresh_ones_kept() -> TestResult {
        let dir = scratch("sweep")?;
        let past = SystemTime::now() - Duration::from_secs(2 * 3600);
        for name in [".a.json.tmp", ".b.sig.tmp", "c.sig", "d.json", "d.sig", ".fresh.json.tmp", "e.json"] {
            std::fs::write(dir.join(name), "x")?;
            if name != ".fresh.json.tmp" {
                std::fs::File::options().write(true).open(dir.join(name))?.set_modified(past)?;
            }
        }
        sweep(&dir, STALE);
        assert_eq!(names(&dir)?, [".fresh.json.tmp", "d.json", "d.sig", "e.json"]);
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }

    #[test]
    fn a_saved_report_checks_out_and_a_flipped_bit_does_not() -> TestResult {
        let key = tbox_protocol::PrivateKey::generate(&mut rand_core::OsRng, 2048)?;
        let other = tbox_protocol::PrivateKey::generate(&mut rand_core::OsRng, 2048)?;
        let dir = scratch("check")?;
        let body = br#"{"log":"ok\n"}"#;
        let path = save(&dir, body, &key.sign(body))?;
        let stored = std::fs::read_to_string(path.with_extension("sig"))?;
        let public = key.public_key();
        check(&path, &std::fs::read(&path)?, Some(stored.trim()), &public)?;
        check(&path, body, None, &public)?;

        let mut flipped = body.to_vec();
        flipped[9] ^= 0x01;
        let why = check(&path, &flipped, Some(stored.trim()), &public).err().ok_or("a flipped bit passed")?;
        assert!(why.contains("content changed"), "{why}");
        let why = check(&path, &flipped, None, &public).err().ok_or("a flipped bit passed unsigned")?;
        assert!(why.contains("content changed"), "{why}");
        let why = check(&path, body, Some(&other.sign(body)), &public).err().ok_or("another key's signature passed")?;
        assert!(why.contains("signature does not verify"), "{why}");
        let why =
            check(&dir.join("hand-made.json"), body, None, &public).err().ok_or("a name without digest passed")?;
        assert!(why.contains("digest"), "{why}");

        let aside = set_aside(&path, "corrupt", "because")?;
        let stem = path.file_stem().and_then(|s| s.to_str()).ok_or("no stem")?;
        assert_eq!(names(&aside)?, [format!("{stem}.json"), format!("{stem}.reason"), format!("{stem}.sig")]);
        assert!(pending(&dir)?.is_empty());
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }
}
