//! Measuring what a running step uses, for the limits no kernel switch enforces for an
//! unprivileged user run from cron: the memory of its whole process tree (every process in its
//! pid namespace), its tasks (a second line behind `RLIMIT_NPROC`, which does not bind root),
//! and the disk its checkout and scratch directory take.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tbox_protocol::{StepLimits, human_size};

/// What the processes of a sandbox use now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Tasks (processes and their threads).
    pub tasks: u64,
    /// Anonymous resident memory (heap, stacks), in bytes: what a runaway allocation grows.
    pub memory: u64,
}

/// `(pid, process group)` of bwrap's only child: the sandbox's pid 1. None until it exists.
pub(crate) fn inner_init(bwrap: u32) -> Option<(i32, i32)> {
    let bwrap = i32::try_from(bwrap).ok()?;
    // Scanning /proc works without the kernel's optional `task/*/children` files.
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|entry| {
        let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
        // `pid (comm) state ppid pgrp …`; comm may hold spaces and parentheses.
        let mut fields = stat.get(stat.rfind(')')? + 1..)?.split_whitespace().skip(1);
        let ppid: i32 = fields.next()?.parse().ok()?;
        let pgrp: i32 = fields.next()?.parse().ok()?;
        (ppid == bwrap).then_some((pid, pgrp))
    })
}

/// Tasks and memory of every process in the pid namespace whose pid 1 (seen from here) is
/// `init`. None when that process is gone.
pub fn usage(init: i32) -> Option<Usage> {
    let ns = std::fs::read_link(format!("/proc/{init}/ns/pid")).ok()?;
    let mut total = Usage::default();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let name = entry.file_name();
        if !name.to_str().is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit())) {
            continue;
        }
        let path = entry.path();
        if std::fs::read_link(path.join("ns/pid")).ok().as_ref() != Some(&ns) {
            continue;
        }
        let Ok(status) = std::fs::read_to_string(path.join("status")) else { continue };
        for line in status.lines() {
            if let Some(v) = line.strip_prefix("Threads:") {
                total.tasks += v.trim().parse::<u64>().unwrap_or(1);
            } else if let Some(v) = line.strip_prefix("RssAnon:") {
                let kib: u64 = v.trim().trim_end_matches("kB").trim().parse().unwrap_or(0);
                total.memory += kib * 1024;
            }
        }
    }
    Some(total)
}

/// Bytes of disk the trees under `roots` take (blocks allocated, so sparse files count what
/// they really use; hard links once per root), not following symbolic links.
pub fn disk_usage(roots: &[PathBuf]) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    let mut seen = std::collections::HashSet::new();
    let mut total = 0;
    for root in roots {
        for entry in walkdir::WalkDir::new(root).into_iter().flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.nlink() > 1 && !meta.is_dir() && !seen.insert((meta.dev(), meta.ino())) {
                continue;
            }
            total += meta.blocks() * 512;
        }
    }
    total
}

/// A limit a step passed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Passed {
    Processes(u32),
    Memory(u64),
    Disk(u64),
}

impl std::fmt::Display for Passed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Passed::Processes(n) => write!(f, "processes limit {n}"),
            Passed::Memory(b) => write!(f, "memory limit {}", human_size(*b)),
            Passed::Disk(b) => write!(f, "disk limit {}", human_size(*b)),
        }
    }
}

/// Watches one step: call [`Watch::check`] often (every 200 ms); it looks at tasks and memory
/// each time and at the disk as often as walking it stays cheap (at most a tenth of the time).
pub struct Watch {
    limits: StepLimits,
    roots: Vec<PathBuf>,
    init: Option<i32>,
    next_disk: Instant,
    /// The most seen at once, for the step's log.
    pub peak: Usage,
}

impl Watch {
    pub fn new(limits: StepLimits, roots: Vec<PathBuf>) -> Watch {
        Watch { limits, roots, init: None, next_disk: Instant::now(), peak: Usage::default() }
    }

    /// Which limit the step in the sandbox of `bwrap` has passed, if any.
    pub fn check(&mut self, bwrap: u32) -> Option<Passed> {
        if self.init.is_none() {
            self.init = inner_init(bwrap).map(|(pid, _)| pid);
        }
        if let Some(u) = self.init.and_then(usage) {
            self.peak.tasks = self.peak.tasks.max(u.tasks);
            self.peak.memory = self.peak.memory.max(u.memory);
            // At the limit is past it: the kernel refuses the next fork there.
            if u.tasks >= u64::from(self.limits.processes) {
                return Some(Passed::Processes(self.limits.processes));
            }
            if u.memory > self.limits.memory {
                return Some(Passed::Memory(self.limits.memory));
            }
        }
        if Instant::now() >= self.next_disk {
            let started = Instant::now();
            let used = disk_usage(&self.roots);
            let took = started.elapsed();
            self.next_disk = Instant::now() + (took * 10).max(Duration::from_secs(1));
            if used > self.limits.disk {
                return Some(Passed::Disk(self.limits.disk));
            }
        }
        None
    }
}

impl Watch {
    /// After a step failed on its own: whether a limit made it fail. The kernel holds the
    /// processes and file size limits itself, faster than any look: a step whose fork was
    /// refused usually gives up between two looks, and says so at the end of its output
    /// (`log_tail`); a write past the file size limit kills with SIGXFSZ.
    pub fn after_failure(&mut self, signal: Option<i32>, log_tail: &str) -> Option<Passed> {
        if signal == Some(libc::SIGXFSZ) || disk_usage(&self.roots) > self.limits.disk {
            return Some(Passed::Disk(self.limits.disk));
        }
        if self.peak.tasks >= u64::from(self.limits.processes) || refused_a_fork(log_tail) {
            return Some(Passed::Processes(self.limits.processes));
        }
        None
    }
}

/// Whether a step's last words say a new process or thread was refused (EAGAIN from fork,
/// clone or pthread_create, as shells, make, Python and glibc word it).
pub fn refused_a_fork(tail: &str) -> bool {
    const SAID: &[&str] = &[
        "Cannot fork",
        "can't fork",
        "fork: retry: Resource temporarily unavailable",
        "fork: Resource temporarily unavailable",
        "vfork: Resource temporarily unavailable",
        "pthread_create",
        "BlockingIOError: [Errno 11]",
        "Resource temporarily unavailable (os error 11)",
    ];
    tail.lines().rev().take(50).any(|l| SAID.iter().any(|s| l.contains(s)))
}

/// Whether `path` is on a filesystem held in memory (tmpfs): where the step's /tmp must not be.
pub fn in_memory(path: &Path) -> bool {
    nix::sys::statfs::statfs(path).map(|s| s.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_named_as_the_log_says_them() {
        assert_eq!(Passed::Memory(4 << 30).to_string(), "memory limit 4 GiB");
        assert_eq!(Passed::Disk(256 << 20).to_string(), "disk limit 256 MiB");
        assert_eq!(Passed::Processes(512).to_string(), "processes limit 512");
    }

    #[test]
    fn disk_usage_counts_blocks() -> std::io::Result<()> {
        let d = std::env::temp_dir().join(format!("tbox-watch-{}", std::process::id()));
        std::fs::create_dir_all(d.join("sub"))?;
        std::fs::write(d.join("sub/f"), vec![1u8; 1 << 20])?;
        let used = disk_usage(std::slice::from_ref(&d));
        assert!((1 << 20..2 << 20).contains(&used), "{used}");
        std::fs::remove_dir_all(d)
    }
}
