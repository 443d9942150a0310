//! The digests of a build's artifacts: the files under the workdir matching the recipe's
//! `artifacts` globs, so that builders' reports can be compared (DESIGN, "Results a project
//! can trust from strangers").
//!
//! This runs outside the sandbox, on files the build wrote: only regular files are read, never
//! through a symlink (a build could point one at the volunteer's key; the digest of a secret
//! is a leak too), a FIFO cannot hold it up, and the count and the bytes read are bounded.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use sha2::{Digest, Sha256};
use tbox_protocol::{Artifact, MAX_ARTIFACTS, hex};

/// Bytes hashed per build at most, all artifacts together.
pub const MAX_BYTES: u64 = 8 << 30;

/// The artifacts found, and what was skipped and why (for the build's log).
#[derive(Debug, Default)]
pub struct Found {
    pub artifacts: Vec<Artifact>,
    pub problems: Vec<String>,
}

/// Hashes the regular files under `base` matching `globs` (skipping `.git`), in path order.
pub fn collect(base: &Path, globs: &[String]) -> Found {
    let mut found = Found::default();
    if globs.is_empty() {
        return found;
    }
    let mut builder = globset::GlobSetBuilder::new();
    for g in globs {
        match globset::GlobBuilder::new(g).literal_separator(true).build() {
            Ok(glob) => {
                builder.add(glob);
            }
            Err(e) => found.problems.push(format!("artifacts glob {g:?} is not valid: {e}")),
        }
    }
    let Ok(set) = builder.build() else { return found };
    let mut budget = MAX_BYTES;
    let walk = walkdir::WalkDir::new(base).sort_by_file_name().into_iter().filter_entry(|e| e.file_name() != ".git");
    for entry in walk.filter_map(Result::ok).filter(|e| e.file_type().is_file()) {
        let Ok(rel) = entry.path().strip_prefix(base) else { continue };
        if !set.is_match(rel) {
            continue;
        }
        let Some(path) = rel.to_str().map(str::to_owned) else {
            found.problems.push(format!("artifact {} has a name that is not UTF-8; not listed", rel.display()));
            continue;
        };
        // What the server would refuse (and with it the whole report) is left out, and said.
        if path.len() > 400 || !path.chars().all(|c| c.is_ascii_graphic() || c == ' ') {
            found.problems.push(format!("artifact {path:?}: a name over 400 bytes or not printable ASCII; not listed"));
            continue;
        }
        if found.artifacts.len() >= MAX_ARTIFACTS {
            found.problems.push(format!("more than {MAX_ARTIFACTS} artifacts match; the rest are not listed"));
            break;
        }
        match hash(entry.path(), budget) {
            Ok((sha256, size)) => {
                budget -= size;
                found.artifacts.push(Artifact { path, sha256, size });
            }
            Err(why) => found.problems.push(format!("artifact {path}: {why}; not listed")),
        }
    }
    found
}

/// SHA-256 and size of a regular file, opened without following a symlink and without
/// blocking on a FIFO put in its place since the walk saw it.
fn hash(path: &Path, budget: u64) -> Result<(String, u64), String> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| format!("cannot be opened ({e})"))?;
    let meta = file.metadata().map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("is not a regular file".into());
    }
    if meta.len() > budget {
        return Err(format!("is larger than the {} GiB left to hash", budget >> 30));
    }
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut buf = vec![0u8; 1 << 16];
    // Bounded by the budget even if the file grows while it is read.
    let mut reader = file.take(budget);
    loop {
        let n = reader.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((hex(&hasher.finalize()), size))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn regular_files_only_never_through_a_symlink() {
        let dir = std::env::temp_dir().join(format!("tbox-artifacts-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("target/release")).unwrap();
        std::fs::write(dir.join("target/release/demo"), b"binary").unwrap();
        std::fs::write(dir.join("secret"), b"the volunteer's key").unwrap();
        std::os::unix::fs::symlink(dir.join("secret"), dir.join("target/release/link")).unwrap();
        nix::unistd::mkfifo(&dir.join("target/release/fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        std::fs::write(dir.join("target/release/tab\there"), b"x").unwrap();
        let found = collect(&dir, &["target/release/*".to_owned()]);
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(found.artifacts.len(), 1, "{found:?}");
        assert!(found.problems.iter().any(|p| p.contains("not printable ASCII")), "{found:?}");
        assert_eq!(found.artifacts[0].path, "target/release/demo");
        assert_eq!(found.artifacts[0].size, 6);
        // sha256("binary")
        assert_eq!(found.artifacts[0].sha256, "9a3a45d01531a20e89ac6ae10b0b0beb0492acd7216a368aa062d1a5fecaf9cd");
    }
}
