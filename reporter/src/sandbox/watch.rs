//! Measuring what a running step uses, for the limits no kernel switch enforces for an
//! unprivileged user run from cron: the memory of its whole process tree, its tasks (a second
//! line behind `RLIMIT_NPROC`, which does not bind root), and the disk its checkout and scratch
//! directory take, files deleted but still open included.
//!
//! The tree is every descendant of the sandbox's pid 1, found by parentage: a process that
//! made a pid namespace of its own (were it able to) is still a descendant. Memory is each
//! process's proportional share of its anonymous and shared-memory pages (`Pss_Anon`,
//! `Pss_Shmem`): a page shared by forked processes, or by a database's backends, counts once
//! in all; memory no process maps cannot be made (no `memfd_create`, see `seccomp.rs`), and
//! System V segments nobody attaches show as the machine's shared memory growing by more than
//! the step maps. Each process's OOM priority is held at 1000 (an ordinary user may lower its
//! own): memory pressure ends the build, not the volunteer's programs.
//!
//! Disk is measured two ways, and the larger counts: a walk of the trees plus the files the
//! step's processes hold open after deleting them (exact for what can be seen), and the
//! filesystem's own use grown since the step began (which also sees a file held only in flight
//! on a socket or only through a mapping, at the price of counting another program's writes
//! on that filesystem). The walk runs in a thread of its own, so a tree slow to walk cannot
//! blind the memory checks.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
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
    /// The shared part of `memory`.
    pub shared: u64,
    /// A process whose OOM priority was lowered and could not be set back.
    pub shielded: bool,
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

/// Tasks and memory of the sandbox whose pid 1 (seen from here) is `init`, every process's OOM
/// priority held at the first to go (1000), and with `low_priority` every process's scheduling
/// group (autogroup) at nice 19. None when it is gone.
pub fn usage(init: i32, low_priority: bool) -> Option<Usage> {
    let mut total = Usage::default();
    for pid in tree(init)? {
        let dir = Path::new("/proc").join(pid.to_string());
        if low_priority {
            // bwrap's new session (and any `setsid` of the step's) is a scheduling group of its
            // own, which the kernel weighs against the volunteer's as a whole, whatever its
            // processes' nice: a nice-19 step would still get half the CPU. Its group is set to
            // 19 too (raising a group's nice needs no privilege; lowering it, which the step
            // would need to undo this, does).
            let group = dir.join("autogroup");
            if std::fs::read_to_string(&group).is_ok_and(|g| !g.trim_end().ends_with("nice 19")) {
                let _ = std::fs::write(&group, "19");
            }
        }
        let Ok(status) = std::fs::read_to_string(dir.join("status")) else { continue };
        let (mut anon, mut shmem) = (0, 0);
        for line in status.lines() {
            if let Some(v) = line.strip_prefix("Threads:") {
                total.tasks += v.trim().parse::<u64>().unwrap_or(1);
            } else if let Some(v) = line.strip_prefix("RssAnon:") {
                anon = kib(v);
            } else if let Some(v) = line.strip_prefix("RssShmem:") {
                shmem = kib(v);
            }
        }
        // Proportional shares where the kernel has them (5.8 and later) and lets us read them;
        // resident sizes else.
        if let Ok(text) = std::fs::read_to_string(dir.join("smaps_rollup")) {
            let field = |name: &str| text.lines().find_map(|l| l.strip_prefix(name)).map(kib);
            if let (Some(a), Some(s)) = (field("Pss_Anon:"), field("Pss_Shmem:")) {
                (anon, shmem) = (a, s);
            }
        }
        total.memory += anon + shmem;
        total.shared += shmem;
        // A step may lower its own OOM priority (an ordinary user can, down to 0), so that
        // memory pressure takes the volunteer's programs instead: set it back.
        let adj = dir.join("oom_score_adj");
        let lowered =
            std::fs::read_to_string(&adj).ok().and_then(|v| v.trim().parse::<i32>().ok()).is_some_and(|v| v < 1000);
        if lowered && std::fs::write(&adj, "1000").is_err() {
            total.shielded = true;
        }
    }
    Some(total)
}

/// The machine's shared memory (`Shmem` of /proc/meminfo), in bytes: System V segments that no
/// process maps show only here.
fn machine_shmem() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    text.lines().find_map(|l| l.strip_prefix("Shmem:")).map(kib)
}

/// Bytes in use on the filesystems holding `roots` (each once).
fn filesystems_used(roots: &[std::path::PathBuf]) -> u64 {
    let mut seen = HashSet::new();
    let mut used = 0;
    for root in roots {
        let Ok(meta) = std::fs::metadata(root) else { continue };
        if !seen.insert(meta.dev()) {
            continue;
        }
        if let Ok(fs) = nix::sys::statvfs::statvfs(root) {
            used += fs.blocks().saturating_sub(fs.blocks_free()).saturating_mul(fs.fragment_size());
        }
    }
    used
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
    /// The limit, and how much of what passed it no process of the step maps (System V shared
    /// memory; or another program's on this machine).
    MemoryUnmapped(u64, u64),
    Disk(u64),
    /// The limit, and how much of what passed it no walk of the step's trees and no look at its
    /// open files finds (files held only through a socket or a mapping; or another program
    /// writing on the same filesystem).
    DiskUnseen(u64, u64),
    /// A process of the step lowered its OOM priority and hid from being set back.
    Shielded,
}

impl std::fmt::Display for Passed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Passed::Processes(n) => write!(f, "processes limit {n}"),
            Passed::Memory(b) => write!(f, "memory limit {}", human_size(*b)),
            Passed::MemoryUnmapped(b, unmapped) => write!(
                f,
                "memory limit {} ({} of it shared memory that no process of the step maps: System V segments, or \
                 another program's on this machine)",
                human_size(*b),
                human_size(*unmapped)
            ),
            Passed::Disk(b) => write!(f, "disk limit {}", human_size(*b)),
            Passed::DiskUnseen(b, unseen) => write!(
                f,
                "disk limit {} ({} of it taken on the build's filesystem by files no walk finds: held only through \
                 a socket or a mapping, or written by another program on this machine)",
                human_size(*b),
                human_size(*unseen)
            ),
            Passed::Shielded => write!(
                f,
                "a process lowered its OOM priority and made itself unobservable (memory pressure must end the \
                 build, not the volunteer's programs)"
            ),
        }
    }
}

/// Watches one step: call [`Watch::check`] often (every 200 ms). Tasks, memory and the
/// filesystem's use are looked at each time; the disk walk and the look at open files run in a
/// thread of their own, as often as they stay cheap, so that a tree slow to walk (millions of
/// hard links) cannot blind the rest.
pub struct Watch {
    limits: StepLimits,
    disk: Meter,
    init: Option<i32>,
    /// Shared with the walking thread: the sandbox's pid 1, once known.
    init_shared: Arc<AtomicI32>,
    /// The walking thread's latest figures.
    latest: Latest,
    stop: Arc<AtomicBool>,
    /// At the step's start: the walk, the filesystems' use, the machine's and the step's shared
    /// memory.
    walked_at_start: u64,
    fs_at_start: u64,
    shmem_at_start: Option<u64>,
    /// The most seen at once, for the step's log.
    pub peak: Usage,
    /// Holds the step's scheduling groups at nice 19 (config `priority = "low"`).
    pub low_priority: bool,
}

impl Watch {
    /// Takes the measures the step is compared with, before it starts.
    pub fn new(limits: StepLimits, disk: Meter) -> Watch {
        let walked_at_start = disk.usage();
        let fs_at_start = filesystems_used(disk.roots());
        let (init_shared, latest, stop) =
            (Arc::new(AtomicI32::new(0)), Arc::default(), Arc::new(AtomicBool::new(false)));
        let thread = (disk.clone(), init_shared.clone(), Arc::clone(&latest), stop.clone());
        let _ = std::thread::Builder::new().name("tbox-disk-watch".into()).spawn(move || walk_often(thread));
        Watch {
            limits,
            disk,
            init: None,
            init_shared,
            latest,
            stop,
            walked_at_start,
            fs_at_start,
            shmem_at_start: machine_shmem(),
            peak: Usage::default(),
            low_priority: false,
        }
    }

    /// Which limit the step in the sandbox of `bwrap` has passed, if any.
    pub fn check(&mut self, bwrap: u32) -> Option<Passed> {
        if self.init.is_none() {
            self.init = inner_init(bwrap).map(|(pid, _)| pid);
            self.init_shared.store(self.init.unwrap_or(0), Ordering::Relaxed);
        }
        if let Some(u) = self.init.and_then(|init| usage(init, self.low_priority)) {
            self.peak.tasks = self.peak.tasks.max(u.tasks);
            self.peak.memory = self.peak.memory.max(u.memory);
            if u.shielded {
                return Some(Passed::Shielded);
            }
            // At the limit is past it: the kernel refuses the next fork there.
            if u.tasks >= u64::from(self.limits.processes) {
                return Some(Passed::Processes(self.limits.processes));
            }
            if u.memory > self.limits.memory {
                return Some(Passed::Memory(self.limits.memory));
            }
            // The machine's shared memory grown by more than the step's processes map: System V
            // segments nobody attaches (they live as long as the step's IPC namespace).
            let grown = self.shmem_at_start.zip(machine_shmem()).map_or(0, |(start, now)| now.saturating_sub(start));
            let unmapped = grown.saturating_sub(u.shared);
            if u.memory + unmapped > self.limits.memory {
                return Some(Passed::MemoryUnmapped(self.limits.memory, unmapped));
            }
        }
        // What the filesystem says: the trees as they were, and what it has lost since. This
        // sees what no walk does (a file held only in flight on a socket, or only mapped), at
        // the price of counting another program's writes there too.
        let by_fs = self.walked_at_start + filesystems_used(self.disk.roots()).saturating_sub(self.fs_at_start);
        let seen = (*self.latest.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
            .map_or(self.walked_at_start, |(walked, deleted)| walked + deleted);
        if seen > self.limits.disk {
            return Some(Passed::Disk(self.limits.disk));
        }
        if by_fs > self.limits.disk {
            // The walk may only be behind: look again now before calling anything unseen.
            let seen = self.disk.usage() + self.init.map_or(0, deleted_but_open);
            if seen > self.limits.disk {
                return Some(Passed::Disk(self.limits.disk));
            }
            return Some(Passed::DiskUnseen(self.limits.disk, by_fs.saturating_sub(seen)));
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

impl Drop for Watch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// What the walking thread found last: (walked, deleted but open), once it has looked.
type Latest = Arc<Mutex<Option<(u64, u64)>>>;

/// The walking thread: the trees and the open files, again and again, pausing a few times as
/// long as a look took (at least a second), until the step ends.
fn walk_often((disk, init, latest, stop): (Meter, Arc<AtomicI32>, Latest, Arc<AtomicBool>)) {
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let walked = disk.usage();
        let pid = init.load(Ordering::Relaxed);
        let deleted = if pid > 0 { deleted_but_open(pid) } else { 0 };
        *latest.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some((walked, deleted));
        let pause = (started.elapsed() * 4).max(Duration::from_secs(1));
        let until = Instant::now() + pause;
        while Instant::now() < until && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(100));
        }
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
