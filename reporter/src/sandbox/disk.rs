//! How much disk a build's trees take, and removing them, whatever the build did to them.
//!
//! A step owns what it writes, so it can make a directory nobody may read (`chmod 000`), nest
//! directories deeper than a path may be long, or fill a filesystem with empty files: each hid
//! its bytes from a plain walk, and left a tree `remove_dir_all` gave up on. So:
//! - the walk is done here, in-process, and where it meets anything it cannot read, that tree is
//!   measured again by `find`, which walks any depth, run with the right to read every
//!   directory the volunteer owns (as root, or in a user namespace of its own as its root with
//!   `CAP_DAC_READ_SEARCH`, through bwrap);
//! - every entry costs at least [`INODE_COST`], so that millions of empty files count;
//! - removal falls back to `chmod -R u+rwX` and `rm -rf`, which manage what the build left.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// What one entry (a file, a directory, a link) costs at least: a block, as most filesystems
/// give even an empty file its inode and directory entry.
pub const INODE_COST: u64 = 4096;

/// The PATH helper programs are looked up in (cron's may be shorter still).
const SYSTEM_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// Measures the disk taken by a build's trees.
#[derive(Debug, Clone)]
pub struct Meter {
    roots: Vec<PathBuf>,
    /// bwrap, to read trees the volunteer made unreadable (not needed as root).
    bwrap: Option<PathBuf>,
}

impl Meter {
    pub fn new(roots: Vec<PathBuf>, bwrap: Option<PathBuf>) -> Meter {
        Meter { roots, bwrap }
    }

    /// The trees measured.
    pub fn roots(&self) -> &[PathBuf] {
        &self.roots
    }

    /// Bytes the trees take: blocks allocated (sparse files count what they use), at least
    /// [`INODE_COST`] an entry, hard links once, symbolic links not followed.
    pub fn usage(&self) -> u64 {
        let mut seen = HashSet::new();
        let mut total = 0;
        for root in &self.roots {
            let mut mine = HashSet::new();
            match walk(root, &mut mine) {
                Ok(bytes) => {
                    total += bytes;
                    seen.extend(mine);
                }
                // Something in it could not be read: all of it again, by a reader that can.
                Err(partial) => match self.walk_with_find(root, &mut seen) {
                    Some(bytes) => total += bytes,
                    None => {
                        total += partial;
                        seen.extend(mine);
                    }
                },
            }
        }
        total
    }

    /// `find` over `root` with the right to read whatever the volunteer owns. None if it could
    /// not run.
    fn walk_with_find(&self, root: &Path, seen: &mut HashSet<(u64, u64)>) -> Option<u64> {
        let mut cmd = if nix::unistd::geteuid().is_root() {
            Command::new("find")
        } else {
            let mut c = Command::new(self.bwrap.as_ref()?);
            c.args(["--unshare-user", "--uid", "0", "--gid", "0", "--cap-add", "CAP_DAC_READ_SEARCH"]).args([
                "--ro-bind",
                "/",
                "/",
                "--die-with-parent",
                "--",
                "find",
            ]);
            c
        };
        let out = cmd
            .arg("-P")
            .arg(root)
            .args(["-printf", "%y %b %n %D %i\\n"])
            .env_clear()
            .env("PATH", SYSTEM_PATH)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()?;
        // Files that vanish during the walk make find exit 1; what it printed still stands.
        let text = String::from_utf8_lossy(&out.stdout);
        if text.is_empty() {
            return None;
        }
        let mut total = 0;
        for line in text.lines() {
            let f: Vec<&str> = line.split(' ').collect();
            let [kind, blocks, links, dev, ino] = f[..] else { continue };
            let (Ok(blocks), Ok(links), Ok(dev), Ok(ino)) =
                (blocks.parse::<u64>(), links.parse::<u64>(), dev.parse::<u64>(), ino.parse::<u64>())
            else {
                continue;
            };
            if links > 1 && kind != "d" && !seen.insert((dev, ino)) {
                continue;
            }
            total += (blocks * 512).max(INODE_COST);
        }
        Some(total)
    }
}

/// The in-process walk: Ok(bytes), or Err(what it could count) when something could not be read.
fn walk(root: &Path, seen: &mut HashSet<(u64, u64)>) -> Result<u64, u64> {
    let mut total = 0;
    let mut complete = true;
    for entry in walkdir::WalkDir::new(root) {
        let meta = match entry.and_then(|e| e.metadata()) {
            Ok(m) => m,
            // Removed while we looked: nothing to count.
            Err(e) if e.io_error().is_some_and(|io| io.kind() == std::io::ErrorKind::NotFound) => continue,
            // Unreadable, too deep, a loop: the tree needs a reader that can.
            Err(_) => {
                complete = false;
                continue;
            }
        };
        if meta.nlink() > 1 && !meta.is_dir() && !seen.insert((meta.dev(), meta.ino())) {
            continue;
        }
        total += (meta.blocks() * 512).max(INODE_COST);
    }
    if complete { Ok(total) } else { Err(total) }
}

/// Whether anything in `root` (its `.git` aside) is a directory its owner cannot list, enter or
/// change, or cannot be walked at all: what stops `git clean` and removal.
pub fn needs_fixing(root: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    let walk = walkdir::WalkDir::new(root).into_iter().filter_entry(|e| e.depth() != 1 || e.file_name() != ".git");
    for entry in walk {
        match entry {
            Ok(e) if e.file_type().is_dir() => {
                if e.metadata().is_ok_and(|m| m.permissions().mode() & 0o700 != 0o700) {
                    return true;
                }
            }
            Ok(_) => {}
            Err(e) if e.io_error().is_some_and(|io| io.kind() == std::io::ErrorKind::NotFound) => {}
            Err(_) => return true,
        }
    }
    false
}

/// Gives the owner back the right to list, enter and change every directory under `root` (and
/// to read and write every file), so that git and removal can do their work. Symbolic links
/// are not followed.
pub fn make_accessible(root: &Path) -> std::io::Result<()> {
    let status = Command::new("chmod")
        .args(["-R", "u+rwX", "--"])
        .arg(root)
        .env_clear()
        .env("PATH", SYSTEM_PATH)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    if status.success() { Ok(()) } else { Err(std::io::Error::other(format!("chmod -R u+rwX failed ({status})"))) }
}

/// Removes a tree a build wrote, however it left it: unreadable directories, any depth (where
/// `remove_dir_all` runs out of descriptors).
pub fn remove_tree(root: &Path) -> std::io::Result<()> {
    if std::fs::symlink_metadata(root).is_err() || std::fs::remove_dir_all(root).is_ok() {
        return Ok(());
    }
    let _ = make_accessible(root);
    let status = Command::new("rm")
        .args(["-rf", "--one-file-system", "--"])
        .arg(root)
        .env_clear()
        .env("PATH", SYSTEM_PATH)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    if status.success() && std::fs::symlink_metadata(root).is_err() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!("cannot remove {}", root.display())))
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn base(tag: &str) -> std::io::Result<PathBuf> {
        let d = std::env::temp_dir().join(format!("tbox-disk-{tag}-{}", std::process::id()));
        let _ = remove_tree(&d);
        std::fs::create_dir_all(&d)?;
        Ok(d)
    }

    #[test]
    fn blocks_and_entries_are_counted() -> std::io::Result<()> {
        let d = base("count")?;
        std::fs::create_dir_all(d.join("sub"))?;
        std::fs::write(d.join("sub/f"), vec![1u8; 1 << 20])?;
        let meter = Meter::new(vec![d.clone()], None);
        let used = meter.usage();
        assert!((1 << 20..2 << 20).contains(&used), "{used}");
        // A thousand empty files are not free.
        for i in 0..1000 {
            std::fs::write(d.join(format!("e{i}")), "")?;
        }
        assert!(meter.usage() >= used + 1000 * INODE_COST, "{}", meter.usage());
        remove_tree(&d)
    }

    /// A tree hidden under a directory nobody may read, and one deeper than a path may be long:
    /// both are measured, and removed. (Run as root, the first is readable anyway; the second
    /// is the same for everyone.)
    #[test]
    fn unreadable_and_deep_trees_are_measured_and_removed() -> std::io::Result<()> {
        let d = base("hidden")?;
        let hidden = d.join("hidden");
        std::fs::create_dir_all(hidden.join("in"))?;
        std::fs::write(hidden.join("in/big"), vec![1u8; 4 << 20])?;
        std::fs::set_permissions(&hidden, std::fs::Permissions::from_mode(0o000))?;
        let bwrap = ["/usr/bin/bwrap", "/usr/local/bin/bwrap"].iter().map(PathBuf::from).find(|p| p.exists());
        let meter = Meter::new(vec![d.clone()], bwrap);
        assert!(meter.usage() >= 4 << 20, "{}", meter.usage());
        assert!(needs_fixing(&d));
        // 300 levels of 40-byte names: past PATH_MAX (4096), made as a build would, with `cd`.
        let deep = d.join("deep");
        std::fs::create_dir_all(&deep)?;
        let made = Command::new("python3")
            .arg("-c")
            .arg("import os\nfor i in range(300):\n    os.mkdir('d' * 40)\n    os.chdir('d' * 40)\nopen('bottom', 'wb').write(bytes(3 << 20))")
            .current_dir(&deep)
            .status()?;
        assert!(made.success());
        assert!(meter.usage() >= (7 << 20) + 300 * INODE_COST, "{}", meter.usage());
        remove_tree(&d)?;
        assert!(!d.exists());
        Ok(())
    }
}
