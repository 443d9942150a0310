//! Measuring what a running step uses, for the limits no kernel switch enforces for an
//! unprivileged user run from cron: the memory of its whole process tree, its tasks (a second
//! line behind `RLIMIT_NPROC`, which does not bind root), and the disk its checkout and scratch
//! directory take, files deleted but still open included.
//!
//! The tree is every descendant of the sandbox's pid 1, found by parentage: a process that
//! made a pid namespace of its own (were it able to) is still a descendant. Memory is each
//! process's proportional share of its anonymous and shared-memory pages (`Pss_Anon`,
//! `Pss_Shmem`): a page shared by forked processes, or by a database's backends, counts once
//! in all. Memory no process maps cannot be made (no `memfd_create`, see `seccomp.rs`); shared
//! memory in /dev/shm is on disk. What is left: System V shared memory not attached by any
//! process, which lives only as long as the step's IPC namespace.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::time::{Duration, Instant};

use tbox_protocol::{StepLimits, human_size};

use super::disk::Meter;

/// What the processes of a sandbox use now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Tasks (processes and their threads).
    pub tasks: u64,
    /// Anonymous and shared memory, in bytes: what a runaway allocation grows.
    pub memory: u64,
}

/// `(pid, process group)` of bwrap's only child: the sandbox's pid 1. None until it exists.
pub(crate) fn inner_init(bwrap: u32) -> Option<(i32, i32)> {
    let bwrap = i32::try_from(bwrap).ok()?;
    processes().into_iter().find_map(|p| (p.ppid == bwrap).then_some((p.pid, p.pgrp)))
}

/// One process, as `/proc/PID/stat` tells.
struct Proc {
    pid: i32,
    ppid: i32,
    pgrp: i32,
}

/// Every process of the machine we may see. Scanning /proc works without the kernel's optional
/// `task/*/children` files.
fn processes() -> Vec<Proc> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.flatten()
        .filter_map(|entry| {
            let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            // `pid (comm) state ppid pgrp …`; comm may hold spaces and parentheses.
            let mut fields = stat.get(stat.rfind(')')? + 1..)?.split_whitespace().skip(1);
            let ppid = fields.next()?.parse().ok()?;
            let pgrp = fields.next()?.parse().ok()?;
            Some(Proc { pid, ppid, pgrp })
        })
        .collect()
}

/// `init` and all its descendants. None when `init` is gone.
fn tree(init: i32) -> Option<Vec<i32>> {
    let all = processes();
    if !all.iter().any(|p| p.pid == init) {
        return None;
    }
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    for p in &all {
        children.entry(p.ppid).or_default().push(p.pid);
    }
    let mut out = vec![init];
    let mut i = 0;
    while let Some(&pid) = out.get(i) {
        out.extend(children.get(&pid).into_iter().flatten().copied().filter(|c| *c != pid));
        i += 1;
    }
    Some(out)
}

/// Tasks and memory of the sandbox whose pid 1 (seen from here) is `init`. None when it is gone.
pub fn usage(init: i32) -> Option<Usage> {
    let mut total = Usage::default();
    for pid in tree(init)? {
        let dir = Path::new("/proc").join(pid.to_string());
        let Ok(status) = std::fs::read_to_string(dir.join("status")) else { continue };
        let mut from_status = 0;
        for line in status.lines() {
            if let Some(v) = line.strip_prefix("Threads:") {
                total.tasks += v.trim().parse::<u64>().unwrap_or(1);
            } else if let Some(v) = line.strip_prefix("RssAnon:").or_else(|| line.strip_prefix("RssShmem:")) {
                from_status += kib(v);
            }
        }
        // Proportional shares where the kernel has them (5.8 and later); resident sizes else.
        let pss = std::fs::read_to_string(dir.join("smaps_rollup")).ok().and_then(|text| {
            let mut found = None;
            for line in text.lines() {
                if let Some(v) = line.strip_prefix("Pss_Anon:").or_else(|| line.strip_prefix("Pss_Shmem:")) {
                    *found.get_or_insert(0) += kib(v);
                }
            }
            found
        });
        total.memory += pss.unwrap_or(from_status);
    }
    Some(total)
}

/// `"  1234 kB"` in bytes.
fn kib(v: &str) -> u64 {
    v.trim().trim_end_matches("kB").trim().parse::<u64>().unwrap_or(0) * 1024
}

/// Bytes of files the sandbox's processes hold open after deleting them: on disk until closed,
/// in no directory a walk finds. Each file once.
pub fn deleted_but_open(init: i32) -> u64 {
    let Some(pids) = tree(init) else { return 0 };
    let mut seen = HashSet::new();
    let mut total = 0;
    for pid in pids {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { continue };
        for fd in fds.flatten() {
            // The descriptor's file itself (the link is followed into it, not by name).
            let Ok(meta) = std::fs::metadata(fd.path()) else { continue };
            if meta.is_file() && meta.nlink() == 0 && seen.insert((meta.dev(), meta.ino())) {
                total += meta.blocks() * 512;
            }
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
/// each time and at the disk and open files as often as looking stays cheap (at most a tenth of
/// the time).
pub struct Watch {
    limits: StepLimits,
    disk: Meter,
    init: Option<i32>,
    next_disk: Instant,
    next_files: Instant,
    /// The last walk's figure, and the last look at deleted files still open.
    walked: u64,
    deleted: u64,
    /// The most seen at once, for the step's log.
    pub peak: Usage,
}

impl Watch {
    pub fn new(limits: StepLimits, disk: Meter) -> Watch {
        let now = Instant::now();
        Watch {
            limits,
            disk,
            init: None,
            next_disk: now,
            next_files: now,
            walked: 0,
            deleted: 0,
            peak: Usage::default(),
        }
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
        let mut looked = false;
        if let Some(init) = self.init
            && Instant::now() >= self.next_files
        {
            let started = Instant::now();
            self.deleted = deleted_but_open(init);
            self.next_files = Instant::now() + (started.elapsed() * 10).max(Duration::from_secs(1));
            looked = true;
        }
        if Instant::now() >= self.next_disk {
            let started = Instant::now();
            self.walked = self.disk.usage();
            self.next_disk = Instant::now() + (started.elapsed() * 10).max(Duration::from_secs(1));
            looked = true;
        }
        if looked && self.walked + self.deleted > self.limits.disk {
            return Some(Passed::Disk(self.limits.disk));
        }
        None
    }

    /// After a step failed on its own: whether a limit made it fail. The kernel holds the
    /// processes and file size limits itself, faster than any look: a step whose fork was
    /// refused usually gives up between two looks, and says so at the end of its output
    /// (`log_tail`); a write past the file size limit kills with SIGXFSZ.
    pub fn after_failure(&mut self, signal: Option<i32>, log_tail: &str) -> Option<Passed> {
        if signal == Some(libc::SIGXFSZ) || self.disk.usage() > self.limits.disk {
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
}
