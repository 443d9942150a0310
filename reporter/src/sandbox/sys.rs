//! The only unsafe code in tbox: what a step's process does between `fork` and the `exec` of
//! bwrap, with raw system calls, because no safe crate offers them there.
//!
//! In that window the child of a multi-threaded program may only make async-signal-safe calls:
//! no allocation, no locks. So everything is prepared before (`Confine` holds plain bytes and
//! numbers) and the closure only calls the kernel.
//!
//! What it does, and why it must happen here rather than in bwrap:
//! - joins a new, empty session keyring: the volunteer's session keyring (tokens, Kerberos
//!   tickets) is inherited across fork, exec and namespaces alike;
//! - makes the step the OOM killer's first choice (`oom_score_adj` 1000), so that memory
//!   pressure ends the build rather than the volunteer's desktop;
//! - enters a user namespace of its own and only then lowers `RLIMIT_NPROC`: the kernel counts a
//!   namespace's tasks against the limit of whoever made it, so set here the limit counts the
//!   sandbox's tasks, while set before it would count every process of the volunteer;
//! - caps the size of any one file (`RLIMIT_FSIZE`) at the disk limit;
//! - lowers the step's CPU and I/O priority (config `priority = "low"`, for sandboxed and
//!   unsandboxed steps alike);
//! - marks every inherited descriptor close-on-exec (cron or a shell may hand some down), except
//!   the ones bwrap reads its options and its seccomp filter from.
#![allow(unsafe_code)]

use std::ffi::CStr;
use std::io;
use std::os::fd::RawFd;
use std::os::unix::process::CommandExt as _;
use std::process::Command;

/// What to apply in the child, prepared before the fork.
#[derive(Debug, Clone)]
pub(crate) struct Confine {
    /// `"<uid> <uid> 1\n"`: the step keeps the volunteer's uid in the new namespace.
    pub uid_map: Vec<u8>,
    /// `"<gid> <gid> 1\n"`.
    pub gid_map: Vec<u8>,
    /// `RLIMIT_NPROC` in the new namespace: tasks of the sandbox.
    pub processes: u64,
    /// `RLIMIT_FSIZE`: the largest file the step may write.
    pub file_size: u64,
    /// The descriptors bwrap reads its options (`--args FD`) and its seccomp filter
    /// (`--seccomp FD`) from; they stay open across exec.
    pub keep_fds: [RawFd; 2],
}

impl Confine {
    /// For the calling user, with these limits.
    pub fn new(processes: u64, file_size: u64, keep_fds: [RawFd; 2]) -> Confine {
        let (uid, gid) = (nix::unistd::getuid().as_raw(), nix::unistd::getgid().as_raw());
        Confine {
            uid_map: format!("{uid} {uid} 1\n").into_bytes(),
            gid_map: format!("{gid} {gid} 1\n").into_bytes(),
            processes,
            file_size,
            keep_fds,
        }
    }
}

/// Has `cmd` apply `confine` in its child before exec.
pub(crate) fn confine(cmd: &mut Command, confine: Confine) {
    // SAFETY: the closure runs in the forked child before exec. It allocates nothing and takes
    // no lock: it reads the prepared fields and makes plain system calls (keyctl, open, write,
    // close, unshare, setrlimit, close_range, fcntl), all async-signal-safe.
    unsafe {
        cmd.pre_exec(move || confine.apply());
    }
}

/// Has `cmd` run with the volunteer's own work first: nice 19 (as BOINC's tasks), and the
/// lowest level of the best-effort I/O class (as `ionice -c2 -n7`; not the idle class, under
/// which a busy disk could starve a step into its timeout). Best effort: a step still runs
/// where the kernel refuses.
pub(crate) fn low_priority(cmd: &mut Command) {
    const IOPRIO_WHO_PROCESS: libc::c_long = 1;
    const IOPRIO_CLASS_BE: libc::c_long = 2;
    // SAFETY: the closure runs in the forked child before exec and only makes two plain system
    // calls on the calling process, with integer arguments.
    unsafe {
        cmd.pre_exec(|| {
            libc::setpriority(libc::PRIO_PROCESS, 0, 19);
            libc::syscall(libc::SYS_ioprio_set, IOPRIO_WHO_PROCESS, 0, (IOPRIO_CLASS_BE << 13) | 7);
            Ok(())
        });
    }
}

impl Confine {
    fn apply(&self) -> io::Result<()> {
        // SAFETY (each block below): plain system calls with valid arguments: integers, a null
        // pointer where the call takes one (a new anonymous keyring), and NUL-terminated
        // static paths.
        let joined = unsafe {
            libc::syscall(libc::SYS_keyctl, libc::KEYCTL_JOIN_SESSION_KEYRING, std::ptr::null::<libc::c_char>())
        };
        if joined < 0 {
            let e = io::Error::last_os_error();
            // A kernel without keys has no keyring to share.
            if e.raw_os_error() != Some(libc::ENOSYS) {
                return Err(e);
            }
        }
        // Best effort: a kernel without it still runs the step.
        let _ = write_file(c"/proc/self/oom_score_adj", b"1000");
        if unsafe { libc::unshare(libc::CLONE_NEWUSER) } != 0 {
            return Err(io::Error::last_os_error());
        }
        write_file(c"/proc/self/setgroups", b"deny")?;
        write_file(c"/proc/self/uid_map", &self.uid_map)?;
        write_file(c"/proc/self/gid_map", &self.gid_map)?;
        set_limit(libc::RLIMIT_NPROC, self.processes)?;
        set_limit(libc::RLIMIT_FSIZE, self.file_size)?;
        let marked = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, libc::CLOSE_RANGE_CLOEXEC) };
        if marked != 0 {
            // Kernels before 5.11: one descriptor at a time, as far as the limit goes.
            let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
            let top = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
                lim.rlim_cur.min(65_536) as RawFd
            } else {
                1024
            };
            for fd in 3..top {
                unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
            }
        }
        for fd in self.keep_fds {
            if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

/// Lowers both the soft and the hard limit (never raises them: the step cannot undo it).
fn set_limit(resource: libc::__rlimit_resource_t, value: u64) -> io::Result<()> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: a valid resource and pointers to live structs.
    if unsafe { libc::getrlimit(resource, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let value = value.min(lim.rlim_max);
    let lim = libc::rlimit { rlim_cur: value, rlim_max: value };
    if unsafe { libc::setrlimit(resource, &lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn write_file(path: &CStr, bytes: &[u8]) -> io::Result<()> {
    // SAFETY: a NUL-terminated path; the buffer is valid for its length; the descriptor is ours.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = libc::write(fd, bytes.as_ptr().cast(), bytes.len());
        let e = io::Error::last_os_error();
        libc::close(fd);
        if n < 0 || n as usize != bytes.len() {
            return Err(e);
        }
    }
    Ok(())
}
