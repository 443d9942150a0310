//! Runs one step: `sh -c` in the workdir (inside a bubblewrap sandbox unless the volunteer opted
//! out, see `sandbox/`), a scrubbed environment, its own process group, a timeout and the
//! sandbox's limits that end the whole group, and output streamed to a file so memory stays
//! flat. The step writes into a pipe, not into the file: a descriptor of the log file would
//! tell it where the volunteer keeps it (`/proc/self/fd`).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write as _};
use std::os::unix::process::{CommandExt as _, ExitStatusExt as _};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use crate::sandbox::Sandbox;
use crate::sandbox::watch::{Passed, Watch};

/// Variables a step inherits from the caller; everything else (tokens, keys, …) stays out.
pub const INHERITED: &[&str] = &["PATH", "HOME", "LANG", "TZ"];

/// Time between TERM and KILL when a step runs out of time.
const GRACE: Duration = Duration::from_secs(5);

/// How a step's process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// It exited with this code.
    Exited(i32),
    /// A signal killed it.
    Signalled(i32),
    /// It ran out of time and its process group was killed.
    TimedOut(Duration),
    /// It wrote more output than `max_output` and its process group was killed.
    TooMuchOutput(u64),
    /// It passed one of the sandbox's limits (tasks, memory, disk) and was ended.
    Limit(Passed),
    /// It could not be started (no shell, no workdir…): the reporter's problem, not the build's.
    NotStarted(String),
    /// The reporter was asked to stop (SIGTERM to `tbox-report serve`) and stopped it.
    Cancelled,
}

/// Set when the reporter must stop: a running step is stopped as on a timeout (see
/// `cmd/serve.rs`, which sets it from SIGTERM and SIGINT).
pub static STOP: std::sync::LazyLock<std::sync::Arc<std::sync::atomic::AtomicBool>> =
    std::sync::LazyLock::new(std::sync::Arc::default);

/// Whether the reporter was asked to stop.
pub fn stopping() -> bool {
    STOP.load(std::sync::atomic::Ordering::SeqCst)
}

impl Ending {
    /// The exit code to report, when there is one.
    pub fn exit_code(&self) -> Option<i32> {
        match self {
            Ending::Exited(c) => Some(*c),
            _ => None,
        }
    }
}

/// What to run.
pub struct Spec<'a> {
    pub command: &'a str,
    pub workdir: &'a Path,
    pub env: &'a BTreeMap<String, String>,
    pub timeout: Duration,
    /// Output allowed on disk before the step is stopped (a runaway loop must not fill it).
    pub max_output: u64,
    /// Runs the step inside this sandbox (`workdir` must be inside the one it makes writable);
    /// `None` runs it on the host as the volunteer.
    pub sandbox: Option<&'a Sandbox>,
    /// Runs the step with the lowest CPU and I/O priority (config `priority = "low"`).
    pub low_priority: bool,
}

/// The CPU time of a sandboxed step reaches this process's `RUSAGE_CHILDREN` (what
/// `schedule.cpu_per_day` counts) only through the sandbox's pid 1, which reaps the step; but
/// bwrap returns as soon as that pid 1 reports the step's status, without waiting for it, and
/// the reaping (with the CPU time) would go to the system's init. While a sandboxed step runs,
/// this process is a child subreaper: it is given that pid 1 and reaps it itself (`reap`).
/// Nothing else can become its orphan then: everything else of the step lives and dies in the
/// sandbox's pid namespace. Only that pid is ever waited for: another thread's child is not
/// ours to reap.
fn adopt_orphans(on: bool) {
    let _ = nix::sys::prctl::set_child_subreaper(on);
}

/// Waits (a few seconds at most) for the sandbox's pid 1 if it became this process's child.
fn reap(init: Pid) {
    let until = Instant::now() + Duration::from_secs(5);
    // Not a child of ours (bwrap reaped it): ECHILD at once.
    while let Ok(WaitStatus::StillAlive) = waitpid(init, Some(WaitPidFlag::WNOHANG)) {
        if Instant::now() >= until {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs a step with its output going to `log` (stdout and stderr interleaved).
///
/// `tick` is called about every 200 ms while it runs (for a progress display).
pub fn run(spec: &Spec<'_>, log: &File, mut tick: impl FnMut(Duration)) -> Ending {
    let started = Instant::now();
    let pipe = std::io::pipe().and_then(|(r, w)| Ok((r, w.try_clone()?, w)));
    let (reader, out, err) = match (pipe, log.try_clone()) {
        (Ok(p), Ok(_)) => p,
        (Err(e), _) | (_, Err(e)) => {
            return Ending::NotStarted(format!("cannot open the step log: {e}"));
        }
    };
    // The step's environment: a few inherited variables, then its own.
    let mut env: BTreeMap<OsString, OsString> =
        INHERITED.iter().filter_map(|name| std::env::var_os(name).map(|v| (OsString::from(name), v))).collect();
    if spec.sandbox.is_some() {
        // The volunteer's HOME is not in the sandbox; a scratch one is.
        env.insert("HOME".into(), crate::sandbox::HOME.into());
        // Only system directories are there: the volunteer's PATH would only show their paths.
        env.insert("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into());
    }
    env.extend(spec.env.iter().map(|(k, v)| (OsString::from(k), OsString::from(v))));
    // Kept until the step has started: bwrap reads its options from it.
    let mut options = None;
    let mut cmd = match spec.sandbox {
        Some(sandbox) => {
            match sandbox.command(spec.workdir, spec.command, env.iter().map(|(k, v)| (k.as_os_str(), v.as_os_str()))) {
                Ok(p) => {
                    options = Some(p.options);
                    p.command
                }
                Err(e) => return Ending::NotStarted(format!("cannot prepare the sandbox: {e}")),
            }
        }
        None => {
            let mut sh = Command::new("sh");
            sh.arg("-c").arg(spec.command).env_clear().envs(&env);
            sh
        }
    };
    // In a sandbox this is bwrap's directory (the step's is its `--chdir`); kept so that a
    // missing workdir fails here, the same way with and without a sandbox.
    cmd.current_dir(spec.workdir)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        // Its own process group, so that a timeout can kill everything it started.
        .process_group(0);
    if spec.low_priority {
        crate::sandbox::sys::low_priority(&mut cmd);
    }
    if spec.sandbox.is_some() {
        adopt_orphans(true);
    }
    // Its baseline (the trees, the filesystem, the machine's shared memory) is taken before
    // the step starts.
    let mut watch = spec.sandbox.map(|s| {
        let mut w = Watch::new(s.limits(), s.disk_meter());
        w.low_priority = spec.low_priority;
        w
    });
    let spawned = cmd.spawn();
    // Ours are closed, so that the step's end is the pipe's end.
    drop(cmd);
    drop(options);
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            let why = if spec.workdir.is_dir() {
                format!("cannot start {}: {e}", spec.sandbox.map_or("sh", |_| "the sandbox (bwrap)"))
            } else {
                format!("workdir {} does not exist", spec.workdir.display())
            };
            return Ending::NotStarted(why);
        }
    };
    let copier = copy_output(reader, log);
    let pgid = Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
    // The sandbox's pid 1, reaped here at the end (see `reap`).
    let mut init = None;
    let ending = loop {
        if spec.sandbox.is_some() && init.is_none() {
            init = crate::sandbox::watch::inner_init(child.id()).map(|(pid, _)| Pid::from_raw(pid));
        }
        match child.try_wait() {
            Ok(Some(status)) => {
                let ending = match (status.code(), status.signal()) {
                    (Some(code), _) => Ending::Exited(code),
                    (None, Some(sig)) => Ending::Signalled(sig),
                    (None, None) => Ending::Exited(-1),
                };
                break ending;
            }
            Ok(None) => {}
            Err(e) => break Ending::NotStarted(format!("lost track of the step: {e}")),
        }
        let written = log.metadata().map(|m| m.len()).unwrap_or(0);
        let stop = stopping();
        let passed = watch.as_mut().and_then(|w| w.check(child.id()));
        if stop || started.elapsed() >= spec.timeout || written > spec.max_output || passed.is_some() {
            // In a sandbox our group is only bwrap: its pid 1 puts the step in a new session.
            // Signalling that session's group lets the step end gracefully; bwrap then returns
            // only once the pid namespace is empty (`setsid` stragglers included), so nothing is
            // left when we return. Signalling bwrap itself would also end the sandbox, but
            // without waiting for it.
            let inner = spec.sandbox.and_then(|_| crate::sandbox::step_group(child.id()));
            let _ = killpg(inner.unwrap_or(pgid), Signal::SIGTERM);
            wait_for_group(&mut child, pgid, GRACE);
            if let Some(inner) = inner {
                // SIGKILL reaches the namespace's pid 1 too, which takes everything inside along.
                let _ = killpg(inner, Signal::SIGKILL);
                wait_for_group(&mut child, pgid, GRACE);
            }
            let _ = killpg(pgid, Signal::SIGKILL);
            let _ = child.wait();
            break if stop {
                Ending::Cancelled
            } else if let Some(limit) = passed {
                Ending::Limit(limit)
            } else if written > spec.max_output {
                Ending::TooMuchOutput(written)
            } else {
                Ending::TimedOut(spec.timeout)
            };
        }
        tick(started.elapsed());
        std::thread::sleep(Duration::from_millis(200));
    };
    // Whatever the step left running in the background goes with it.
    let _ = killpg(pgid, Signal::SIGKILL);
    if let Some(init) = init {
        reap(init);
    }
    if spec.sandbox.is_some() {
        adopt_orphans(false);
    }
    // Everything holding the pipe is gone, and the copy ends with what was written; but an
    // unsandboxed step may leave a process that escaped its group (setsid) holding it: the log
    // is then what came within a moment, and the copy goes on alone until that one ends.
    let last_words = copier.recv_timeout(Duration::from_secs(2)).unwrap_or_default();
    // A step that failed because the kernel held it to a limit (a fork refused, a file cut at
    // the size limit) says which.
    let failed = matches!(ending, Ending::Signalled(_)) || matches!(ending, Ending::Exited(c) if c != 0);
    if let (Some(w), true) = (watch.as_mut(), failed) {
        let signal = match ending {
            Ending::Signalled(s) => Some(s),
            Ending::Exited(c) if c > 128 => Some(c - 128),
            _ => None,
        };
        if let Some(limit) = w.after_failure(signal, &String::from_utf8_lossy(&last_words)) {
            return Ending::Limit(limit);
        }
    }
    ending
}

/// How much of the end of a step's output is kept in memory, to tell why it failed.
const LAST_WORDS: usize = 16 << 10;

/// Copies the step's output into its log until every writer has gone; then sends the last
/// [`LAST_WORDS`] bytes of it on the channel.
fn copy_output(mut reader: std::io::PipeReader, log: &File) -> std::sync::mpsc::Receiver<Vec<u8>> {
    let log = log.try_clone();
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut last = Vec::with_capacity(2 * LAST_WORDS);
        if let Ok(mut log) = log {
            let mut buf = vec![0u8; 64 << 10];
            loop {
                match reader.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        if log.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        last.extend_from_slice(&buf[..n]);
                        if last.len() > 2 * LAST_WORDS {
                            last.drain(..last.len() - LAST_WORDS);
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
        }
        let _ = done.send(last);
    });
    finished
}

/// Waits up to `limit` for `child` to end and every other member of its group `pgid` to be gone.
fn wait_for_group(child: &mut Child, pgid: Pid, limit: Duration) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) && killpg(pgid, None).is_err() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Reads a step log, keeping at most `cap` bytes: the head and the tail, with a line in the
/// middle saying how much was cut. Returns (text, truncated).
pub fn read_capped(path: &Path, cap: u64) -> std::io::Result<(String, bool)> {
    let mut f = File::open(path)?;
    let len = f.metadata()?.len();
    let half = cap / 2;
    let (mut head, mut tail) = if len <= cap {
        let mut bytes = Vec::with_capacity(len as usize);
        f.read_to_end(&mut bytes)?;
        let text = String::from_utf8_lossy(&bytes).into_owned();
        // Invalid bytes become three each (U+FFFD): the cap holds for the text, not the file.
        if text.len() as u64 <= cap {
            return Ok((text, false));
        }
        let tail = bytes.split_off(bytes.len() / 2);
        (bytes, tail)
    } else {
        let mut head = vec![0; half as usize];
        f.read_exact(&mut head)?;
        let mut tail = vec![0; half as usize];
        f.seek(SeekFrom::Start(len - half))?;
        f.read_exact(&mut tail)?;
        (head, tail)
    };
    // Cut at line boundaries so neither part starts or ends mid-line.
    if let Some(nl) = head.iter().rposition(|&b| b == b'\n') {
        head.truncate(nl + 1);
    }
    if let Some(nl) = tail.iter().position(|&b| b == b'\n') {
        tail.drain(..=nl);
    }
    let (head, tail) = (String::from_utf8_lossy(&head), String::from_utf8_lossy(&tail));
    let half = usize::try_from(half).unwrap_or(usize::MAX);
    let (head, tail) = (head_of(&head, half), tail_of(&tail, half));
    let cut = len.saturating_sub(head.len() as u64 + tail.len() as u64);
    let mut text = head.to_owned();
    text.push_str(&format!(
        "\n[tbox-report] … {cut} bytes cut from the middle of this {len}-byte log (limit {cap} bytes) …\n\n"
    ));
    text.push_str(tail);
    Ok((text, true))
}

/// At most `max` bytes from the start of `s`, on a character boundary.
fn head_of(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// At most `max` bytes from the end of `s`, on a character boundary.
fn tail_of(s: &str, max: usize) -> &str {
    let mut start = s.len().saturating_sub(max);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("tbox-runner-{tag}-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&d);
        d
    }

    #[test]
    fn captures_output_and_exit_code() -> std::io::Result<()> {
        let dir = tmp("exit");
        let log_path = dir.join("log");
        let log = File::create(&log_path)?;
        let env = BTreeMap::from([("GREETING".to_owned(), "hi".to_owned())]);
        let spec = Spec {
            command: "echo $GREETING; echo oops >&2; exit 3",
            workdir: &dir,
            env: &env,
            timeout: Duration::from_secs(30),
            max_output: 1 << 20,
            sandbox: None,
            low_priority: false,
        };
        assert_eq!(run(&spec, &log, |_| {}), Ending::Exited(3));
        assert_eq!(read_capped(&log_path, 1 << 20)?.0, "hi\noops\n");
        let missing = dir.join("nope");
        let spec = Spec { workdir: &missing, ..spec };
        assert!(matches!(run(&spec, &log, |_| {}), Ending::NotStarted(m) if m.contains("does not exist")));
        std::fs::remove_dir_all(dir)
    }

    #[test]
    fn runaway_output_is_stopped() -> std::io::Result<()> {
        let dir = tmp("runaway");
        let log = File::create(dir.join("log"))?;
        let env = BTreeMap::new();
        let spec = Spec {
            command: "yes",
            workdir: &dir,
            env: &env,
            timeout: Duration::from_secs(60),
            max_output: 1 << 20,
            sandbox: None,
            low_priority: false,
        };
        assert!(matches!(run(&spec, &log, |_| {}), Ending::TooMuchOutput(n) if n > 1 << 20));
        std::fs::remove_dir_all(dir)
    }

    #[test]
    fn long_logs_keep_head_and_tail() -> std::io::Result<()> {
        let dir = tmp("cap");
        let path = dir.join("log");
        let text: String = (0..10_000).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&path, &text)?;
        let (kept, cut) = read_capped(&path, 10_000)?;
        assert!(cut && kept.len() < 10_300);
        assert!(kept.starts_with("line 0\n") && kept.ends_with("line 9999\n"));
        assert!(kept.contains("bytes cut from the middle"));
        std::fs::remove_dir_all(dir)
    }

    /// Red team: invalid bytes become three bytes each in the text; the cap holds for the text.
    #[test]
    fn the_cap_holds_for_the_text_not_the_file() -> std::io::Result<()> {
        let d = tmp("lossy");
        let path = d.join("log");
        for len in [200 << 10, 4 << 20] {
            std::fs::write(&path, vec![0xffu8; len])?;
            let (text, truncated) = read_capped(&path, 256 << 10)?;
            assert!(text.len() <= (256 << 10) + 200, "{len}: {}", text.len());
            assert!(truncated, "{len}");
        }
        std::fs::remove_dir_all(d)
    }
}
