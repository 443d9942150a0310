//! The bubblewrap sandbox build steps run in. A recipe comes from the project, not from the
//! volunteer, so a step must not see the volunteer's keys, config, dotfiles or private files,
//! nor write outside its checkout, nor reach the network unless both sides allow it, nor take
//! the machine down.
//!
//! The sandbox starts from an empty root and adds only: the system directories read-only
//! (`/usr`, `/etc`, `/opt`, …), with every entry in them that not everyone may read masked; a
//! new `/proc` and `/dev`; the checkout read-write at [`WORKDIR`]; a scratch HOME at
//! [`HOME`]; and `/tmp`, `/var/tmp`, `/run` and `/dev/shm` on disk, in the build's scratch
//! directory, so that they count against the disk limit and not the machine's memory. The
//! step sees neutral paths and names (user `build`, host `sandbox`), not the volunteer's.
//! Every namespace is new (user, pid, network, ipc, uts, cgroup); the network one is kept only
//! when network is allowed. Capabilities are dropped, so a reporter running as root does not
//! hand root powers to the build. bwrap reads its options from a file descriptor (`--args`),
//! so its command line, which the step can read as its pid 1's, names none of the paths.
//!
//! Between fork and exec (`sys.rs`) the step gets a fresh session keyring, the OOM killer's
//! first place, and its limits: tasks (`RLIMIT_NPROC`, counted in its own user namespace) and
//! file size; `watch.rs` measures memory, tasks and disk while it runs.

pub mod disk;
mod seccomp;
pub(crate) mod sys;
pub mod watch;

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{Seek as _, Write as _};
use std::os::fd::AsRawFd as _;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::unistd::Pid;
use tbox_protocol::StepLimits;

/// Where the checkout is inside the sandbox.
pub const WORKDIR: &str = "/work";
/// The step's HOME inside the sandbox.
pub const HOME: &str = "/home/build";

/// `sandbox = "auto" | "none"` in the volunteer's config (serde lowercase), default Auto.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Run steps under bubblewrap; refuse to run them when that is impossible.
    #[default]
    Auto,
    /// Run steps unsandboxed (the volunteer's choice, at their own risk).
    None,
}

/// A working bubblewrap set-up for one build.
#[derive(Debug, Clone)]
pub struct Sandbox {
    /// Absolute, so that the steps do not depend on the PATH they are given.
    program: PathBuf,
    /// The files that say who and where the step is, and where they go.
    etc: Vec<(PathBuf, &'static str)>,
    /// The entries of the system directories that not everyone may read.
    masks: Vec<PathBuf>,
    nested: Nested,
    /// The checkout on the host (bound at [`WORKDIR`]).
    workdir: PathBuf,
    /// The build's scratch directory on the host: HOME, /tmp and the rest live there.
    scratch: PathBuf,
    network: bool,
    limits: StepLimits,
}

/// A step's bwrap command, and the files its options and seccomp filter are read from (keep
/// them until spawned).
pub struct Prepared {
    pub command: Command,
    pub options: [File; 2],
}

/// Why no sandbox could be made; it says what is wrong and how to fix it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct Unavailable(String);

/// The way out every message offers; a volunteer who cannot fix the host may still build.
const OPT_OUT: &str = "or, at your own risk (a recipe could then read your files), set `sandbox = \"none\"` in the \
                       tbox-report config";

/// System directories a build may need, bound read-only when they exist.
const SYSTEM_DIRS: &[&str] = &["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/opt"];

/// Writable places that would otherwise be in memory (tmpfs), each a directory of the scratch.
const ON_DISK: &[(&str, &str)] = &[("tmp", "/tmp"), ("var-tmp", "/var/tmp"), ("run", "/run"), ("shm", "/dev/shm")];

impl Sandbox {
    /// Finds bwrap and checks, by really starting a trivial sandbox with the same options, that it
    /// works here.
    ///
    /// `workdir`: the checkout, bound read-write at [`WORKDIR`]; it need not exist yet (a first
    /// clone), the check then leaves it out. `scratch`: a directory of this build's (created if
    /// missing) that holds the step's HOME, /tmp and the rest, on disk. `network`: whether steps
    /// may use the network. `limits`: what each step may use.
    pub fn new(workdir: &Path, scratch: &Path, network: bool, limits: StepLimits) -> Result<Sandbox, Unavailable> {
        match find_bwrap() {
            Some(program) => Sandbox::with_program(&program, workdir, scratch, network, limits),
            None => Err(not_installed()),
        }
    }

    /// [`Sandbox::new`] with a given bwrap, so that tests can point at one that is missing.
    pub(crate) fn with_program(
        program: &Path,
        workdir: &Path,
        scratch: &Path,
        network: bool,
        limits: StepLimits,
    ) -> Result<Sandbox, Unavailable> {
        let made = |what: &Path, e: std::io::Error| Unavailable(format!("cannot create {}: {e}", what.display()));
        std::fs::create_dir_all(scratch).map_err(|e| made(scratch, e))?;
        // Only the volunteer should see what builds leave there.
        let _ = std::fs::set_permissions(scratch, std::fs::Permissions::from_mode(0o700));
        let scratch = real_path(scratch);
        let workdir = real_path(workdir);
        if workdir == Path::new("/") || scratch == Path::new("/") {
            return Err(Unavailable(
                "the workdir and the scratch directory cannot be / (it would all be writable)".into(),
            ));
        }
        for dir in ["home"].iter().chain(ON_DISK.iter().map(|(d, _)| d)) {
            let d = scratch.join(dir);
            std::fs::create_dir_all(&d).map_err(|e| made(&d, e))?;
        }
        let etc = write_identity(&scratch.join("etc")).map_err(|e| made(&scratch.join("etc"), e))?;
        let masks = private_entries();
        let nested = if forbids_user_namespaces(program) { Nested::Forbidden } else { Nested::Allowed };
        let sandbox = Sandbox {
            program: program.to_owned(),
            etc,
            masks,
            nested,
            workdir: workdir.clone(),
            scratch,
            network,
            limits,
        };
        // A missing workdir cannot be bound yet; the check is about namespaces and mounts anyway.
        let dir = if workdir.is_dir() { WORKDIR } else { HOME };
        let out = sandbox.command_in(dir, "exit 0", std::iter::empty()).and_then(|mut p| {
            p.command.env("PATH", "/usr/bin:/bin").stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
            p.command.output()
        });
        match out {
            Ok(out) if out.status.success() => Ok(sandbox),
            Ok(out) => Err(Unavailable(diagnose(program, &String::from_utf8_lossy(&out.stderr), read_sysctl))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(not_installed()),
            // The set-up before exec failed: the user namespace, most likely.
            Err(e) => Err(Unavailable(diagnose(program, &e.to_string(), read_sysctl))),
        }
    }

    /// What to write into the report's `sandbox` field (one of [`tbox_protocol::SANDBOX_KINDS`]).
    pub fn describe(&self) -> &'static str {
        if self.network { "bubblewrap+network" } else { "bubblewrap" }
    }

    /// The limits each step runs with.
    pub fn limits(&self) -> StepLimits {
        self.limits
    }

    /// The build's scratch directory on the host (HOME is its `home/`, /tmp its `tmp/`).
    pub fn scratch(&self) -> &Path {
        &self.scratch
    }

    /// How many entries of the system directories are hidden because not everyone may read them.
    pub fn masked(&self) -> usize {
        self.masks.len()
    }

    /// Whether a step may make user namespaces of its own (bwrap before 0.8 cannot forbid it).
    pub fn nests_user_namespaces(&self) -> bool {
        self.nested == Nested::Allowed
    }

    /// What the disk limit measures: the checkout and the scratch directory.
    pub fn disk_meter(&self) -> disk::Meter {
        disk::Meter::new(vec![self.workdir.clone(), self.scratch.clone()], Some(self.program.clone()))
    }

    /// `bwrap --args FD --setenv … --chdir <dir> -- sh -c <command>`, `dir` being a directory on
    /// the host, in the workdir.
    ///
    /// The step's environment goes in through `--setenv`, never into bwrap's own process:
    /// bwrap runs outside the sandbox, and a recipe's `LD_PRELOAD` or `LD_LIBRARY_PATH`
    /// pointing into the checkout would run the project's code there. bwrap itself gets an
    /// empty environment (it is started by absolute path and needs none).
    pub(crate) fn command<'e>(
        &self,
        dir: &Path,
        command: &str,
        env: impl Iterator<Item = (&'e OsStr, &'e OsStr)>,
    ) -> std::io::Result<Prepared> {
        let inside = match real_path(dir).strip_prefix(&self.workdir) {
            Ok(rel) if !rel.as_os_str().is_empty() => Path::new(WORKDIR).join(rel),
            _ => PathBuf::from(WORKDIR),
        };
        self.command_in(&inside.to_string_lossy(), command, env)
    }

    fn command_in<'e>(
        &self,
        inside: &str,
        command: &str,
        env: impl Iterator<Item = (&'e OsStr, &'e OsStr)>,
    ) -> std::io::Result<Prepared> {
        // Made for each step: the workdir may have appeared since (a first clone), a masked
        // entry may have gone (bwrap cannot mask what is not there).
        let workdir = self.workdir.is_dir().then_some(self.workdir.as_path());
        let mut args = sandbox_args(workdir, &self.scratch, &self.etc, &self.masks, self.network, self.nested);
        for (k, v) in env {
            args.extend([OsString::from("--setenv"), k.to_owned(), v.to_owned()]);
        }
        args.extend([OsString::from("--chdir"), OsString::from(inside)]);
        // NUL-separated, read by bwrap from a descriptor; the files themselves are gone at once.
        // A NUL inside one would start another option of the recipe's choosing (`--bind / /`):
        // whatever checked the values before, none gets through here.
        let mut options = Vec::new();
        for a in &args {
            if a.as_bytes().contains(&0) {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("a NUL character in {:?}: no environment variable or path may hold one", a),
                ));
            }
            options.extend_from_slice(a.as_bytes());
            options.push(0);
        }
        let options = self.unlinked_file("args", &options)?;
        let filter = self.unlinked_file("seccomp", &seccomp::filter())?;
        let (fd, filter_fd) = (options.as_raw_fd(), filter.as_raw_fd());
        let mut cmd = Command::new(&self.program);
        cmd.env_clear()
            .arg("--args")
            .arg(fd.to_string())
            .arg("--seccomp")
            .arg(filter_fd.to_string())
            .args(["--", "sh", "-c", command]);
        let limits = self.limits;
        sys::confine(&mut cmd, sys::Confine::new(u64::from(limits.processes), limits.disk, [fd, filter_fd]));
        Ok(Prepared { command: cmd, options: [options, filter] })
    }

    /// A file holding `bytes`, open for reading from its start, and already unlinked.
    fn unlinked_file(&self, what: &str, bytes: &[u8]) -> std::io::Result<File> {
        let path = self.scratch.join(format!("bwrap-{what}-{}", std::process::id()));
        let mut file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path)?;
        let _ = std::fs::remove_file(&path);
        file.write_all(bytes)?;
        file.rewind()?;
        Ok(file)
    }
}

/// The process group of the step in the sandbox whose outer bwrap is `bwrap`: the one of
/// bwrap's only child, the namespace's pid 1, which made a new session for the step
/// (`--new-session`). None until the sandbox is set up.
pub(crate) fn step_group(bwrap: u32) -> Option<Pid> {
    watch::inner_init(bwrap).and_then(|(_, pgrp)| (pgrp > 0).then(|| Pid::from_raw(pgrp)))
}

/// Whether a step may make user namespaces of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Nested {
    /// bwrap older than 0.8 cannot forbid it.
    Allowed,
    Forbidden,
}

/// Whether this bwrap can forbid a step its own user namespaces (`--disable-userns`, 0.8.0).
fn forbids_user_namespaces(program: &Path) -> bool {
    Command::new(program)
        .arg("--help")
        .env_clear()
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("--disable-userns"))
}

/// Entries of a new /proc that act on the whole machine, made read-only (a step run by root is
/// uid 0 of the machine to the kernel's sysctl checks: it could set `kernel.core_pattern`, a
/// program the kernel then runs as root), and entries that tell about the machine and its keys,
/// hidden. The same lists as Docker's defaults.
const PROC_READ_ONLY: &[&str] = &["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"];
const PROC_HIDDEN_FILES: &[&str] = &[
    "/proc/kcore",
    "/proc/keys",
    "/proc/key-users",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
];
const PROC_HIDDEN_DIRS: &[&str] = &["/proc/acpi", "/proc/asound", "/proc/scsi"];

/// The bwrap options, without the environment, `--chdir` and the command. Without `workdir`
/// (not there yet) it is the same sandbox minus that bind.
fn sandbox_args(
    workdir: Option<&Path>,
    scratch: &Path,
    etc: &[(PathBuf, &str)],
    masks: &[PathBuf],
    network: bool,
    nested: Nested,
) -> Vec<OsString> {
    let mut a = Args(Vec::new());
    a.push(["--unshare-all"]);
    if nested == Nested::Forbidden {
        // A user namespace of the step's own would give it the capabilities to make a pid
        // namespace whose processes the watcher would not see as the sandbox's.
        a.push(["--unshare-user", "--disable-userns"]);
    }
    if network {
        a.push(["--share-net"]);
    }
    // If the reporter dies, nothing it started may run on; a new session keeps the step away
    // from the volunteer's terminal (TIOCSTI); without capabilities root inside is only a uid.
    a.push(["--die-with-parent", "--new-session", "--cap-drop", "ALL", "--hostname", "sandbox"]);
    for dir in SYSTEM_DIRS {
        let path = Path::new(dir);
        match std::fs::symlink_metadata(path) {
            // Merged /usr: /bin is a link to usr/bin; the same link inside keeps paths working.
            Ok(m) if m.file_type().is_symlink() => {
                if let Ok(target) = std::fs::read_link(path) {
                    a.push([OsString::from("--symlink"), target.into(), path.into()]);
                }
            }
            Ok(m) if m.is_dir() && *dir == "/etc" => etc_entries(&mut a, etc, masks),
            Ok(m) if m.is_dir() => a.bind("--ro-bind", path, path),
            _ => {}
        }
    }
    // The volunteer (or root, or a group of theirs) could read these on the host; the build
    // sees only what any user of the machine could.
    for hidden in masks {
        match std::fs::symlink_metadata(hidden) {
            Ok(m) if m.is_dir() => {
                a.push([OsString::from("--tmpfs"), hidden.clone().into()]);
                a.push([OsString::from("--remount-ro"), hidden.clone().into()]);
            }
            Ok(_) => a.push([OsString::from("--ro-bind"), "/dev/null".into(), hidden.clone().into()]),
            // Gone since: nothing to hide.
            Err(_) => {}
        }
    }
    // Who and where the step is: neutral names instead of the volunteer's.
    for (file, at) in etc {
        a.bind("--ro-bind", file, Path::new(at));
    }
    if Path::new("/etc").is_dir() {
        a.push(["--remount-ro", "/etc"]);
    }
    a.push(["--proc", "/proc"]);
    // Only those the host has: bwrap cannot create a mount point inside /proc.
    for p in PROC_READ_ONLY.iter().filter(|p| Path::new(p).exists()) {
        a.bind("--ro-bind", Path::new(p), Path::new(p));
    }
    for p in PROC_HIDDEN_FILES.iter().filter(|p| Path::new(p).is_file()) {
        a.bind("--ro-bind", Path::new("/dev/null"), Path::new(p));
    }
    for p in PROC_HIDDEN_DIRS.iter().filter(|p| Path::new(p).is_dir()) {
        a.push(["--tmpfs", p, "--remount-ro", p]);
    }
    a.push(["--dev", "/dev"]);
    for (dir, at) in ON_DISK {
        a.bind("--bind", &scratch.join(dir), Path::new(at));
    }
    // /dev itself is a tmpfs (memory): nothing may be written there but /dev/shm, on disk.
    a.push(["--remount-ro", "/dev"]);
    if network {
        // With systemd-resolved, /etc/resolv.conf points into /run, which is otherwise private.
        if let Ok(resolv) = std::fs::canonicalize("/etc/resolv.conf")
            && resolv.starts_with("/run")
            && let Some(dir) = resolv.parent()
        {
            a.bind("--ro-bind", dir, dir);
        }
    }
    a.bind("--bind", &scratch.join("home"), Path::new(HOME));
    if let Some(w) = workdir {
        a.bind("--bind", w, Path::new(WORKDIR));
        // The checkout's git metadata is read-only: git runs outside the sandbox on the next
        // update, and a hook or config (core.fsmonitor, a filter) written into `.git` would run
        // there.
        if w.join(".git").is_dir() {
            a.bind("--ro-bind", &w.join(".git"), &Path::new(WORKDIR).join(".git"));
        }
    }
    // The rest of the root is bwrap's scaffolding (mount points); a write there would vanish
    // silently, better that it fails.
    a.push(["--remount-ro", "/"]);
    a.0
}

/// /etc as a directory of the sandbox's own (a tmpfs, read-only once filled) holding each of the
/// host's entries, bound one by one, rather than the host's /etc bound whole. A mount on a
/// path of the host's /etc (the neutral /etc/passwd, a masked /etc/shadow) goes away when the
/// host replaces that file (`useradd`, `passwd`, a package install write a new file and rename
/// it over the old one, which detaches mounts on it in other namespaces): mid-build, the step
/// would see the machine's users or its shadow file. On a directory of the sandbox's own, the
/// host's renames change nothing the step sees, and entries made after the step started are
/// not there at all. The identity files and masks are mounted over these afterwards.
fn etc_entries(a: &mut Args, identity: &[(PathBuf, &str)], masks: &[PathBuf]) {
    a.push(["--tmpfs", "/etc"]);
    let Ok(entries) = std::fs::read_dir("/etc") else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        // Those are mounted later, each on a mount point bwrap makes for it.
        if identity.iter().any(|(_, at)| Path::new(at) == path) || masks.contains(&path) {
            continue;
        }
        match entry.file_type() {
            Ok(t) if t.is_symlink() => {
                if let Ok(target) = std::fs::read_link(&path) {
                    a.push([OsString::from("--symlink"), target.into(), path.into()]);
                }
            }
            Ok(_) => a.bind("--ro-bind", &path, &path),
            Err(_) => {}
        }
    }
}

/// Builds bwrap's argv.
struct Args(Vec<OsString>);

impl Args {
    fn push<S: Into<OsString>>(&mut self, items: impl IntoIterator<Item = S>) {
        self.0.extend(items.into_iter().map(Into::into));
    }

    /// `option source destination`.
    fn bind(&mut self, option: &str, from: &Path, to: &Path) {
        self.push([OsString::from(option), from.into(), to.into()]);
    }
}

/// Writes the files that say who and where the step is (user `build` with HOME [`HOME`], host
/// `sandbox`, a machine id shared by all sandboxes) and returns them with where they go, for
/// the ones the host has.
fn write_identity(dir: &Path) -> std::io::Result<Vec<(PathBuf, &'static str)>> {
    std::fs::create_dir_all(dir)?;
    let (uid, gid) = (nix::unistd::getuid().as_raw(), nix::unistd::getgid().as_raw());
    let mut passwd = String::from("root:x:0:0:root:/root:/bin/sh\n");
    let mut group = String::from("root:x:0:\n");
    if uid != 0 {
        passwd.push_str(&format!("build:x:{uid}:{gid}:build:{HOME}:/bin/sh\n"));
    }
    if gid != 0 {
        group.push_str(&format!("build:x:{gid}:\n"));
    }
    passwd.push_str("nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n");
    group.push_str("nogroup:x:65534:\n");
    // The backups and lists next to them name the machine's users too (`passwd-` is readable by
    // all), and `mailname` the machine.
    let files: [(&str, &'static str, String); 12] = [
        ("passwd", "/etc/passwd", passwd.clone()),
        ("passwd-", "/etc/passwd-", passwd),
        ("group", "/etc/group", group.clone()),
        ("group-", "/etc/group-", group),
        ("subuid", "/etc/subuid", String::new()),
        ("subuid-", "/etc/subuid-", String::new()),
        ("subgid", "/etc/subgid", String::new()),
        ("subgid-", "/etc/subgid-", String::new()),
        ("mailname", "/etc/mailname", "sandbox\n".into()),
        ("hostname", "/etc/hostname", "sandbox\n".into()),
        ("hosts", "/etc/hosts", "127.0.0.1 localhost sandbox\n::1 localhost sandbox\n".into()),
        ("machine-id", "/etc/machine-id", "74626f7873616e64626f780000000000\n".into()),
    ];
    let mut out = Vec::new();
    for (name, at, text) in files {
        // bwrap cannot make a mount point inside the read-only /etc: only files the host has.
        if Path::new(at).exists() {
            let path = dir.join(name);
            std::fs::write(&path, text)?;
            out.push((path, at));
        }
    }
    Ok(out)
}

/// Entries of the bound system directories a build must not see: what not everyone may read
/// (shadow, TLS and SSH private keys, a volunteer's mode-600 files under /opt or /usr/local…),
/// so that a build sees only what any user of the machine could; and, for a volunteer who is
/// not root, what is theirs: entries they own and directories they may write to. The step runs
/// with the volunteer's uid, so a file of theirs made or replaced there while it runs (a new
/// mode-600 config in their /opt/app) would be readable by it, and mounts cannot hide what
/// does not exist yet. A directory hidden hides everything below.
fn private_entries() -> Vec<PathBuf> {
    let uid = nix::unistd::getuid().as_raw();
    let who = (uid != 0).then(|| Who {
        uid,
        gids: nix::unistd::getgroups()
            .unwrap_or_default()
            .into_iter()
            .map(|g| g.as_raw())
            .chain([nix::unistd::getegid().as_raw()])
            .collect(),
        ask_kernel: true,
    });
    let roots: Vec<&Path> = SYSTEM_DIRS.iter().map(Path::new).collect();
    private_entries_in(&roots, who.as_ref())
}

/// A volunteer who is not root: their uid and groups.
struct Who {
    uid: u32,
    gids: Vec<u32>,
    /// Whether they are this process, so that the kernel can be asked whether they may write
    /// to a directory: it also knows the ACLs (`setfacl -m u:vol:rwx`), which mode bits do not
    /// show.
    ask_kernel: bool,
}

impl Who {
    /// Whether this entry is theirs: they own it, or (a directory) they may add entries to it.
    fn owns(&self, path: &Path, meta: &std::fs::Metadata) -> bool {
        use std::os::unix::fs::MetadataExt as _;
        let mode = meta.mode();
        meta.uid() == self.uid
            || (meta.is_dir()
                && (mode & 0o002 != 0
                    || (mode & 0o020 != 0 && self.gids.contains(&meta.gid()))
                    || (self.ask_kernel && nix::unistd::access(path, nix::unistd::AccessFlags::W_OK).is_ok())))
    }
}

fn private_entries_in(roots: &[&Path], who: Option<&Who>) -> Vec<PathBuf> {
    let mut hidden = Vec::new();
    for path in roots {
        if !std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir()) {
            continue;
        }
        let mut walk = walkdir::WalkDir::new(path).min_depth(1).same_file_system(false).into_iter();
        while let Some(entry) = walk.next() {
            let Ok(entry) = entry else { continue };
            // Symbolic links lead nowhere private: what they point to is masked where it is.
            let Ok(meta) = entry.metadata() else { continue };
            let mode = meta.permissions().mode();
            let theirs = who.is_some_and(|w| w.owns(entry.path(), &meta)) && !entry.path_is_symlink();
            if meta.is_dir() {
                if mode & 0o005 != 0o005 || theirs {
                    hidden.push(entry.into_path());
                    walk.skip_current_dir();
                }
            } else if (meta.is_file() || meta.file_type().is_socket_like()) && (mode & 0o004 == 0 || theirs) {
                hidden.push(entry.into_path());
            }
        }
    }
    hidden
}

/// Sockets and FIFOs are files to mask too (a private agent socket under /opt, say).
trait SocketLike {
    fn is_socket_like(&self) -> bool;
}

impl SocketLike for std::fs::FileType {
    fn is_socket_like(&self) -> bool {
        use std::os::unix::fs::FileTypeExt as _;
        self.is_socket() || self.is_fifo()
    }
}

/// The path with symlinks resolved when it exists (the sandbox has no symlinks on the way to it,
/// so the runner's and the sandbox's spelling must agree), else made absolute.
fn real_path(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).or_else(|_| std::path::absolute(path)).unwrap_or_else(|_| path.to_owned())
}

/// bwrap in the PATH, or where distributions put it (cron's PATH is short).
fn find_bwrap() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("bwrap"))
        .chain([PathBuf::from("/usr/bin/bwrap"), PathBuf::from("/usr/local/bin/bwrap")])
        .find(|p| {
            p.is_absolute() && std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

fn not_installed() -> Unavailable {
    Unavailable(format!(
        "build steps run in a bubblewrap sandbox, but bubblewrap (bwrap) is not installed; install it \
         (`apt-get install bubblewrap`, `dnf install bubblewrap`, `pacman -S bubblewrap`, `zypper install bubblewrap`), \
         {OPT_OUT}"
    ))
}

fn read_sysctl(name: &str) -> Option<String> {
    std::fs::read_to_string(Path::new("/proc/sys").join(name.replace('.', "/"))).ok().map(|s| s.trim().to_owned())
}

/// Turns bwrap's complaint into a fix. The usual cause is that this kernel does not let
/// unprivileged users create user namespaces; which switch does it depends on the distribution.
fn diagnose(program: &Path, stderr: &str, sysctl: impl Fn(&str) -> Option<String>) -> String {
    let said = stderr.trim();
    let said = if said.is_empty() { "no message" } else { said };
    let mut fixes = Vec::new();
    if sysctl("kernel.apparmor_restrict_unprivileged_userns").as_deref() == Some("1") {
        fixes.push(
            "AppArmor forbids unprivileged user namespaces here (Ubuntu 23.10 and later): allow them with \
             `sysctl -w kernel.apparmor_restrict_unprivileged_userns=0` (persist it in /etc/sysctl.d/), or give \
             bwrap an AppArmor profile that allows `userns` (e.g. /etc/apparmor.d/bwrap with \
             `profile bwrap /usr/bin/bwrap flags=(unconfined) { userns, }`, then `apparmor_parser -r` it)",
        );
    }
    if sysctl("kernel.unprivileged_userns_clone").as_deref() == Some("0") {
        fixes.push(
            "the kernel forbids unprivileged user namespaces: `sysctl -w kernel.unprivileged_userns_clone=1` \
             (persist it in /etc/sysctl.d/)",
        );
    }
    if sysctl("user.max_user_namespaces").as_deref() == Some("0") {
        fixes.push("user namespaces are switched off: `sysctl -w user.max_user_namespaces=10000`");
    }
    if fixes.is_empty() {
        fixes.push(
            "bwrap needs unprivileged user namespaces: check `sysctl kernel.unprivileged_userns_clone` (must be 1 \
             where it exists), `user.max_user_namespaces` (must not be 0) and, on Ubuntu 23.10 and later, \
             `kernel.apparmor_restrict_unprivileged_userns` (0, or an AppArmor profile for bwrap); inside a \
             container, the container must allow them too (Docker's default seccomp profile does not)",
        );
    }
    format!(
        "cannot start a bubblewrap sandbox for the build steps ({} said: {said}); {}; {OPT_OUT}",
        program.display(),
        fixes.join("; ")
    )
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::fs::File;
    use std::time::{Duration, Instant};

    use tbox_protocol::DEFAULT_LIMITS;

    use super::*;
    use crate::runner::{self, Ending, Spec};
    use crate::sandbox::watch::Passed;

    type Result = std::result::Result<(), Box<dyn std::error::Error>>;

    /// A fresh directory for one test, under /tmp like most real checkouts' temporary files.
    fn base(tag: &str) -> std::io::Result<PathBuf> {
        let d = std::env::temp_dir().join(format!("tbox-sandbox-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d)?;
        d.canonicalize()
    }

    /// bwrap's path, or None after saying the test is skipped. Installed but not working is a
    /// failure: the message then says how to fix the machine.
    fn bwrap_or_skip() -> Option<PathBuf> {
        let found = find_bwrap();
        if found.is_none() {
            assert!(std::env::var_os("CI").is_none(), "bubblewrap is required in CI");
            println!("skipped: bubblewrap not installed");
        }
        found
    }

    fn make(bwrap: &Path, workdir: &Path, scratch: &Path, network: bool) -> std::result::Result<Sandbox, Unavailable> {
        Sandbox::with_program(bwrap, workdir, scratch, network, DEFAULT_LIMITS)
    }

    /// Runs `command` in the sandbox; returns how it ended and its output.
    fn run_in(sandbox: &Sandbox, workdir: &Path, command: &str, env: &BTreeMap<String, String>) -> (Ending, String) {
        run_with_timeout(sandbox, workdir, command, env, Duration::from_secs(60))
    }

    fn run_with_timeout(
        sandbox: &Sandbox,
        workdir: &Path,
        command: &str,
        env: &BTreeMap<String, String>,
        timeout: Duration,
    ) -> (Ending, String) {
        let log_path = workdir.with_extension(format!("log-{}", std::process::id()));
        let spec =
            Spec { command, workdir, env, timeout, max_output: 1 << 20, sandbox: Some(sandbox), low_priority: false };
        let ending = match File::create(&log_path) {
            Ok(log) => runner::run(&spec, &log, |_| {}),
            Err(e) => Ending::NotStarted(e.to_string()),
        };
        let out = std::fs::read_to_string(&log_path).unwrap_or_default();
        let _ = std::fs::remove_file(&log_path);
        (ending, out)
    }

    /// Shell checks print `FAIL: …` lines and a final `done`.
    const FAIL: &str = "fail() { echo \"FAIL: $*\"; }\n";

    fn assert_all_passed(ending: &Ending, out: &str) {
        assert_eq!(*ending, Ending::Exited(0), "output:\n{out}");
        assert!(!out.contains("FAIL") && out.ends_with("done\n"), "output:\n{out}");
    }

    /// The volunteer's world, as the reporter would lay it out: a HOME with keys and config, the
    /// checkout below it, a neighbour of the checkout, and a scratch directory for the build.
    struct Layout {
        base: PathBuf,
        fake_home: PathBuf,
        workdir: PathBuf,
        scratch: PathBuf,
    }

    fn layout(tag: &str) -> std::io::Result<Layout> {
        let base = base(tag)?;
        let fake_home = base.join("home");
        let work = fake_home.join(".local/share/tbox/work");
        let workdir = work.join("demo");
        std::fs::create_dir_all(fake_home.join(".ssh"))?;
        std::fs::create_dir_all(fake_home.join(".config/tbox"))?;
        std::fs::create_dir_all(&workdir)?;
        std::fs::write(fake_home.join(".ssh/id_ed25519"), "secret key")?;
        std::fs::write(fake_home.join(".config/tbox/config.toml"), "key = \"secret\"")?;
        std::fs::write(work.join("other.txt"), "another project's file")?;
        std::fs::write(workdir.join("source.c"), "int main(void) { return 0; }")?;
        Ok(Layout { scratch: base.join("scratch"), base, fake_home, workdir })
    }

    #[test]
    fn the_volunteers_files_are_not_visible() -> Result {
        let Some(bwrap) = bwrap_or_skip() else { return Ok(()) };
        let l = layout("hidden")?;
        let sandbox = make(&bwrap, &l.workdir, &l.scratch, false)?;
        let mut env = BTreeMap::from([("FAKE_HOME".to_owned(), l.fake_home.display().to_string())]);
        // The real HOME is checked too, unless this test's files live below it.
        let real_home = std::env::var("HOME").ok().filter(|h| h != "/" && !l.base.starts_with(h));
        env.insert("REAL_HOME".to_owned(), real_home.unwrap_or_default());
        let script = r#"
            test -e "$FAKE_HOME/.ssh/id_ed25519" && fail "the key is visible: $(cat "$FAKE_HOME/.ssh/id_ed25519")"
            test -e "$FAKE_HOME" && fail "the volunteer's home shows: $(ls -A "$FAKE_HOME")"
            test -e ../other.txt && fail "next to the workdir: $(ls -A ..)"
            test "$(pwd)" = /work || fail "the step is in $(pwd)"
            for d in /root /home/* /srv /mnt /media /var/lib /var/log; do
                test "$(ls -A "$d" 2>/dev/null)" = "" || fail "$d shows: $(ls -A "$d")"
            done
            test -z "$REAL_HOME" || test "$(ls -A "$REAL_HOME" 2>/dev/null)" = "" || fail "$REAL_HOME shows: $(ls -A "$REAL_HOME")"
            test "$HOME" = /home/build || fail "HOME is $HOME"
            echo built > "$HOME/.cache-test" || fail "HOME is not writable"
            test -r source.c || fail "the checkout is not readable"
            test "$(cat /etc/shadow 2>/dev/null)" = "" || fail "/etc/shadow is readable"
            echo done
        "#;
        let (ending, out) = run_in(&sandbox, &l.workdir, &format!("{FAIL}{script}"), &env);
        assert_all_passed(&ending, &out);
        // What the build left in its HOME is in the build's scratch directory.
        assert_eq!(std::fs::read_to_string(l.scratch.join("home/.cache-test"))?, "built\n");
        std::fs::remove_dir_all(&l.base)?;
        Ok(())
    }

    #[test]
    fn the_step_learns_no_name_or_path_of_the_volunteers() -> Result {
        let Some(bwrap) = bwrap_or_skip() else { return Ok(()) };
        let l = layout("names")?;
        let sandbox = make(&bwrap, &l.workdir, &l.scratch, false)?;
        // Everything a step could read that names where and who the volunteer is.
        let script = "tr '\\0' ' ' < /proc/1/cmdline; echo; tr '\\0' ' ' < /proc/self/cmdline; echo; \
                      ls -l /proc/self/fd/; id -un; hostname; cat /etc/hostname /etc/hosts; echo \"$HOME $PWD\"; env; \
                      cat /etc/passwd /etc/passwd- /etc/group /etc/group- /etc/subuid /etc/subgid /etc/mailname 2>/dev/null; \
                      getent passwd";
        let (ending, out) = run_in(&sandbox, &l.workdir, script, &BTreeMap::new());
        assert_eq!(ending, Ending::Exited(0), "{out}");
        let base = l.base.display().to_string();
        assert!(!out.contains(&base), "the step saw {base}:\n{out}");
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")?.trim().to_owned();
        assert!(
            host.is_empty() || !out.split_whitespace().any(|w| w == host),
            "the step saw the host name {host}:\n{out}"
        );
        if let Ok(user) = std::env::var("USER").or_else(|_| std::env::var("LOGNAME")) {
            assert!(user == "root" || !out.contains(&user), "the step saw the user name {user}:\n{out}");
        }
        // Nor the machine's people: no login of the host's (uid 1000 and up) is named.
        for line in std::fs::read_to_string("/etc/passwd")?.lines() {
            let f: Vec<&str> = line.split(':').collect();
            if let [name, _, uid, ..] = f[..]
                && uid.parse::<u32>().is_ok_and(|u| (1000..65534).contains(&u))
            {
                assert!(!out.contains(&format!("{name}:")), "the step saw the user {name}:\n{out}");
            }
        }
        assert!(out.contains("\nsandbox\n") && out.contains("/home/build /work"), "{out}");
        // bwrap's own options (every masked path, every bind) are not on its command line.
        assert!(out.lines().next().is_some_and(|l| l.contains("bwrap --args ")), "{out}");
        assert!(!out.contains("--ro-bind") && !out.contains("/etc/shadow"), "{out}");
        std::fs::remove_dir_all(&l.base)?;
        Ok(())
    }

    #[test]
    fn private_files_anywhere_in_the_system_are_masked() -> Result {
        let Some(bwrap) = bwrap_or_skip() else { return Ok(()) };
        let tag = format!("tbox-test-{}", std::process::id());
        let places = [Path::new("/opt").join(&tag), Path::new("/usr/local/share").join(&tag)];
        let mut made = Vec::new();
        for dir in &places {
            if std::fs::create_dir_all(dir).is_ok() {
                std::fs::write(dir.join("secret"), "PRIVATE-TOKEN")?;
                std::fs::set_permissions(dir.join("secret"), std::fs::Permissions::from_mode(0o600))?;
                std::fs::create_dir_all(dir.join("locked"))?;
                std::fs::write(dir.join("locked/inner"), "PRIVATE-INNER")?;
                std::fs::set_permissions(dir.join("locked"), std::fs::Permissions::from_mode(0o700))?;
                std::fs::write(dir.join("public"), "anyone may read this")?;
                std::fs::set_permissions(dir.join("public"), std::fs::Permissions::from_mode(0o644))?;
                made.push(dir.clone());
            }
        }
        if made.is_empty() {
            println!("skipped: cannot write under /opt or /usr/local/share here");
            return Ok(());
        }
        let l = layout("private")?;
        let sandbox = make(&bwrap, &l.workdir, &l.scratch, false)?;
        assert!(sandbox.masked() >= 2 * made.len(), "{}", sandbox.masked());
        let script: String = made
            .iter()
            .map(|d| {
                let d = d.display();
                format!("cat {d}/secret {d}/locked/inner {d}/public 2>/dev/null; ")
            })
            .collect();
        let (ending, out) = run_in(&sandbox, &l.workdir, &script, &BTreeMap::new());
        for d in &made {
            let _ = std::fs::set_permissions(d.join("locked"), std::fs::Permissions::from_mode(0o755));
            std::fs::remove_dir_all(d)?;
        }
        assert!(matches!(ending, Ending::Exited(_)), "{ending:?}");
        assert!(!out.contains("PRIVATE"), "a private file was read:\n{out}");
        // The check can fail: what anyone may read is there.
        assert_eq!(out.matches("anyone may read this").count(), made.len(), "{out}");
        std::fs::remove_dir_all(&l.base)?;
        Ok(())
    }

    /// The red team's way in: a file of the volunteer's made or replaced while a step runs is
    /// readable by it (same uid) unless the whole of what is theirs is hidden.
    #[test]
    fn what_is_the_volunteers_under_system_directories_is_hidden() -> Result {
        use std::os::unix::fs::chown;
        if !nix::unistd::getuid().is_root() {
            println!("skipped: making files of another user's needs root");
            return Ok(());
        }
        let root = base("theirs")?;
        let (uid, gid) = (4242, 4343);
        for d in ["mine", "shared", "sticky", "sys/deeper"] {
            std::fs::create_dir_all(root.join(d))?;
        }
        for f in ["mine/config", "sys/their-file", "sys/public", "sys/deeper/public"] {
            std::fs::write(root.join(f), "x")?;
            std::fs::set_permissions(root.join(f), std::fs::Permissions::from_mode(0o644))?;
        }
        chown(root.join("mine"), Some(uid), None)?;
        chown(root.join("sys/their-file"), Some(uid), None)?;
        chown(root.join("shared"), None, Some(gid))?;
        std::fs::set_permissions(root.join("shared"), std::fs::Permissions::from_mode(0o2775))?;
        std::fs::set_permissions(root.join("sticky"), std::fs::Permissions::from_mode(0o1777))?;
        let who = Who { uid, gids: vec![gid], ask_kernel: false };
        let hidden = private_entries_in(&[root.as_path()], Some(&who));
        let rel: Vec<String> =
            hidden.iter().map(|p| p.strip_prefix(&root).unwrap_or(p).display().to_string()).collect::<Vec<_>>();
        for theirs in ["mine", "shared", "sticky", "sys/their-file"] {
            assert!(rel.contains(&theirs.to_owned()), "{theirs} is not hidden: {rel:?}");
        }
        for public in ["sys", "sys/public", "sys/deeper", "sys/deeper/public", "mine/config"] {
            assert!(!rel.contains(&public.to_owned()), "{public} is hidden: {rel:?}");
        }
        // Root's builds (warned against) see what root installed: the rule is for volunteers.
        assert!(private_entries_in(&[root.as_path()], None).is_empty());
        std::fs::remove_dir_all(&root)?;
        Ok(())
    }

    /// The host rewriting /etc mid-step (useradd, passwd, a package install: a new file renamed
    /// over the old) detached the masks and the neutral passwd from the step's /etc; and a
    /// private file made there then was there for the step too.
    #[test]
    fn the_host_rewriting_etc_mid_step_changes_nothing_the_step_sees() -> Result {
        let Some(bwrap) = bwrap_or_skip() else { return Ok(()) };
        let tag = format!("tbox-test-{}", std::process::id());
        let (private, fresh) =
            (Path::new("/etc").join(format!("{tag}-private")), Path::new("/etc").join(format!("{tag}-new")));
        let write_private = |path: &Path, text: &str| -> std::io::Result<()> {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, text)?;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
            std::fs::rename(&tmp, path)
        };
        if write_private(&private, "OLD-SECRET").is_err() {
            println!("skipped: cannot write under /etc here");
            return Ok(());
        }
        let l = layout("etc-rename")?;
        let sandbox = make(&bwrap, &l.workdir, &l.scratch, false)?;
        let changer = std::thread::spawn({
            let (private, fresh) = (private.clone(), fresh.clone());
            move || {
                std::thread::sleep(Duration::from_millis(700));
                write_private(&private, "NEW-SECRET").and_then(|()| write_private(&fresh, "FRESH-SECRET"))
            }
        });
        let script = format!(
            "sleep 3; cat {p} {f} 2>&1; grep -c . /etc/passwd; ls -l {p}; echo end",
            p = private.display(),
            f = fresh.display()
        );
        let (ending, out) = run_in(&sandbox, &l.workdir, &script, &BTreeMap::new());
        let changed = changer.join().expect("the thread changing /etc panicked");
        let _ = std::fs::remove_file(&private);
        let _ = std::fs::remove_file(&fresh);
        changed?;
        assert!(matches!(ending, Ending::Exited(_)), "{ending:?}\n{out}");
        assert!(out.contains("end"), "{out}");
        assert!(!out.contains("SECRET"), "the step read what the host wrote mid-step:\n{out}");
        // The neutral passwd is still the one the step sees: root, build (or not, as root), nobody.
        assert!(out.lines().any(|l| l == "2" || l == "3"), "{out}");
        std::fs::remove_dir_all(&l.base)?;
        Ok(())
    }

    #[test]
    fn writes_stay_in_the_workdir_and_a_private_tmp_on_disk() -> Result {
        let Some(bwrap) = bwrap_or_skip() else { return Ok(()) };
        let l = layout("writes")?;
        let sandbox = make(&bwrap, &l.workdir, &l.scratch, false)?;
        let tag = format!("tbox-sandbox-{}", std::process::id());
        let host_tmp = Path::new("/tmp").join(format!("{tag}-host"));
        std::fs::write(&host_tmp, "the host's /tmp")?;
        let env = BTreeMap::from([("TAG".to_owned(), tag.clone())]);
        let script = r#"
            for f in /etc/$TAG /usr/$TAG /usr/local/$TAG /$TAG /opt/$TAG /var/$TAG /proc/$TAG /dev/$TAG; do
                touch "$f" 2>/dev/null && fail "wrote $f"
            done
            echo escape > ../escape 2>/dev/null # on the host, the parent must stay untouched
            echo object > built.o || fail "cannot write in the workdir"
            mkdir -p sub/dir && echo x > sub/dir/f || fail "cannot make directories in the workdir"
            echo tmp > /tmp/$TAG-inside || fail "cannot write /tmp"
            echo tmp > /var/tmp/$TAG-inside || fail "cannot write /var/tmp"
            echo shm > /dev/shm/$TAG-inside || fail "cannot write /dev/shm"
            test -e /tmp/$TAG-host && fail "the host's /tmp is visible"
            echo done
        "#;
        let (ending, out) = run_in(&sandbox, &l.workdir, &format!("{FAIL}{script}"), &env);
        assert_all_passed(&ending, &out);
        assert_eq!(std::fs::read_to_string(l.workdir.join("built.o"))?, "object\n");
        assert!(l.workdir.join("sub/dir/f").is_file());
        // The step's /tmp is a directory of the build's scratch, on disk: not the host's /tmp,
        // and not memory.
        assert_eq!(std::fs::read_to_string(l.scratch.join("tmp").join(format!("{tag}-inside")))?, "tmp\n");
        assert_eq!(std::fs::read_to_string(l.scratch.join("shm").join(format!("{tag}-inside")))?, "shm\n");
        let parent = l.workdir.parent().ok_or("workdir has no parent")?;
        for leaked in [
            parent.join("escape"),
            Path::new("/tmp").join(format!("{tag}-inside")),
            Path::new("/var/tmp").join(format!("{tag}-inside")),
            Path::new("/etc").join(&tag),
            Path::new("/usr").join(&tag),
        ] {
            assert!(!leaked.exists(), "{} was written on the host", leaked.display());
        }
        std::fs::remove_file(host_tmp)?;
        std::fs::remove_dir_all(&l.base)?;
        Ok(())
    }

    #[test]
    fn network_only_when_allowed() -> Result {
        let Some(bwrap) = bwrap_or_skip() else { return Ok(()) };
        let l = layout("net")?;
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        // dash has no /dev/tcp; bash (essential on Debian) does.
        let command = format!(
            "bash -c 'exec 3<>/dev/tcp/127.0.0.1/{port}' 2>/dev/null && echo connected || echo no network; echo done"
        );
        let env = BTreeMap::new();
        let closed = make(&bwrap, &l.workdir, &l.scratch, false)?;
        assert_eq!(closed.describe(), "bubblewrap");
        let (ending, out) = run_in(&closed, &l.workdir, &command, &env);
        assert_eq!((ending, out.as_str()), (Ending::Exited(0), "no network\ndone\n"));
        let open = make(&bwrap, &l.workdir, &l.scratch, true)?;
        assert_eq!(open.describe(), "bubblewrap+network");
        assert!(
            tbox_protocol::SANDBOX_KINDS.contains(&open.describe())
                && tbox_protocol::SANDBOX_KINDS.contains(&closed.describe())
        );
        let (ending, out) = run_in(&open, &l.workdir, &command, &env);
        assert_eq!((ending, out.as_str()), (Ending::Exited(0), "connected\ndone\n"));
        std::fs::remove_dir_all(&l.base)?;
        Ok(())
    }

    /// Processes whose command line contains `marker`, seen from the host, once those already
    /// killed have had a moment to go: when a pid namespace's init dies the kernel kills the
    /// rest, but they finish exiting on their own time, which on a loaded machine is not at once.
    fn processes_with(marker: &str) -> Vec<String> {
        let scan = || -> Vec<String> {
            let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
            entries
                .flatten()
                .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
                .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
                .filter(|c| c.contains(marker))
                .collect()
        };
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let found = scan();
            if found.is_empty() || Instant::now() > deadline {
                return found;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    #[test]
    fn nothing_outlives_its_step() -> Result {
        let Some(bwrap) = bwrap_or_skip() else { return Ok(()) };
        let l = layout("timeout")?;
        let sandbox = make(&bwrap, &l.workdir, &l.scratch, false)?;
        let env = BTreeMap::new();
        // A duration no other test uses, so that leftovers can be recognised.
        let marker = format!("sleep 98{}", std::process::id());
        // `setsid` leaves the step's process group: only the pid namespace can catch it.
        let command = format!("{marker} & {marker} & setsid {marker} & wait");
        let started = Instant::now();
        let (ending, out) = run_with_timeout(&sandbox, &l.workdir, &command, &env, Duration::from_secs(2));
        assert_eq!(ending, Ending::TimedOut(Duration::from_secs(2)), "output:\n{out}");
        assert!(started.elapsed() < Duration::from_secs(15), "took {:?}", started.elapsed());
        assert_eq!(processes_with(&marker), Vec::<String>::new());
        // A step that ends normally takes its background processes with it too.
        let command = format!("setsid {marker} & {marker} & echo started");
        let (ending, out) = run_in(&sandbox, &l.workdir, &command, &env);
        assert_eq!((ending, out.as_str()), (Ending::Exited(0), "started\n"));
        assert_eq!(processes_with(&marker), Vec::<String>::new());
        // A step deaf to TERM gets KILL after the grace time, and still leaves nothing.
        let command = format!("trap '' TERM; {marker} & setsid {marker} & while :; do {marker}; done");
        let started = Instant::now();
        let (ending, out) = run_with_timeout(&sandbox, &l.workdir, &command, &env, Duration::from_secs(1));
        assert_eq!(ending, Ending::TimedOut(Duration::from_secs(1)), "output:\n{out}");
        assert!(started.elapsed() < Duration::from_secs(15), "took {:?}", started.elapsed());
        assert_eq!(processes_with(&marker), Vec::<String>::new());
        std::fs::remove_dir_all(&l.base)?;
        Ok(())
    }

    #[test]
    fn a_step_past_a_limit_is_ended_and_the_limit_named() -> Result {
        let Some(bwrap) = bwrap_or_skip() else { return Ok(()) };
        let l = layout("limits")?;
        let limits = StepLimits { processes: 64, memory: 96 << 20, disk: 64 << 20 };
        let sandbox = Sandbox::with_program(&bwrap, &l.workdir, &l.scratch, false, limits)?;
        let env = BTreeMap::new();
        let marker = format!("sleep 97{}", std::process::id());
        // Tasks: a loop that starts far more than allowed.
        let started = Instant::now();
        let (ending, out) =
            run_in(&sandbox, &l.workdir, &format!("for i in $(seq 500); do {marker} & done; wait"), &env);
        assert_eq!(ending, Ending::Limit(Passed::Processes(64)), "{out}");
        assert!(started.elapsed() < Duration::from_secs(30), "took {:?}", started.elapsed());
        assert_eq!(processes_with(&marker), Vec::<String>::new());
        // Memory: 400 MiB held by one process (python, else a shell string).
        let grow = "python3 -c 'import time; b = bytearray(400 << 20); time.sleep(30)' 2>/dev/null \
                    || { x=$(head -c 400000000 /dev/zero | tr '\\0' x); sleep 30; }";
        let (ending, out) = run_in(&sandbox, &l.workdir, grow, &env);
        assert_eq!(ending, Ending::Limit(Passed::Memory(96 << 20)), "{out}");
        // Shared memory (an anonymous mmap is MAP_SHARED in Python), touched by two processes:
        // counted, and once.
        let shared = "python3 -c 'import mmap, os, time\nm = mmap.mmap(-1, 150 << 20)\nm.write(bytes(150 << 20))\nos.fork()\ntime.sleep(30)'";
        let (ending, out) = run_in(&sandbox, &l.workdir, shared, &env);
        assert_eq!(ending, Ending::Limit(Passed::Memory(96 << 20)), "{out}");
        let within = "python3 -c 'import mmap, os, time\nm = mmap.mmap(-1, 60 << 20)\nm.write(bytes(60 << 20))\nos.fork()\ntime.sleep(2)'";
        let (ending, out) = run_in(&sandbox, &l.workdir, within, &env);
        assert_eq!(ending, Ending::Exited(0), "shared pages counted twice? {out}");
        // Disk: the workdir, and /tmp (on disk: it counts too).
        for target in ["big", "/tmp/big"] {
            let (ending, out) =
                run_in(&sandbox, &l.workdir, &format!("dd if=/dev/zero of={target} bs=1M count=200; sleep 30"), &env);
            assert_eq!(ending, Ending::Limit(Passed::Disk(64 << 20)), "{target}: {out}");
            let _ = std::fs::remove_file(l.workdir.join("big"));
            let _ = std::fs::remove_file(l.scratch.join("tmp/big"));
        }
        std::fs::remove_dir_all(&l.base)?;
        Ok(())
    }

    /// What a step run by root (or anyone) tries against the kernel itself: a sysctl (here one
    /// written with its own value, so that a failure of this test harms nothing), the keyrings,
    /// memory no process maps, and a user namespace of its own.
    #[test]
    fn the_kernel_is_out_of_a_steps_reach() -> Result {
        let Some(bwrap) = bwrap_or_skip() else { return Ok(()) };
        let l = layout("kernel")?;
        let sandbox = make(&bwrap, &l.workdir, &l.scratch, false)?;
        let probe = r#"
v=$(cat /proc/sys/kernel/core_pattern); (printf '%s\n' "$v" > /proc/sys/kernel/core_pattern) 2>/dev/null && echo WROTE-SYSCTL
echo "keys: $(cat /proc/keys 2>/dev/null | wc -l)"
python3 -c '
import ctypes, os, platform
nr = {"x86_64": (250, 319), "aarch64": (219, 279)}[platform.machine()]
libc = ctypes.CDLL(None, use_errno=True)
print("keyctl", libc.syscall(nr[0], 0, -3, 0), ctypes.get_errno())
print("memfd", libc.syscall(nr[1], b"x", 0), ctypes.get_errno())
print("getpid", os.getpid() > 0)
'
unshare -U true 2>/dev/null && echo NESTED-USERNS
true"#;
        let (ending, out) = run_in(&sandbox, &l.workdir, probe, &BTreeMap::new());
        assert_eq!(ending, Ending::Exited(0), "{out}");
        assert!(!out.contains("WROTE-SYSCTL"), "{out}");
        assert!(out.contains("keys: 0\n"), "{out}");
        assert!(out.contains(&format!("keyctl -1 {}\n", libc::ENOSYS)), "{out}");
        assert!(out.contains(&format!("memfd -1 {}\n", libc::ENOSYS)), "{out}");
        // The filter stops only those: everything else works.
        assert!(out.contains("getpid True"), "{out}");
        if forbids_user_namespaces(&bwrap) {
            assert!(!out.contains("NESTED-USERNS"), "{out}");
        }
        std::fs::remove_dir_all(&l.base)?;
        Ok(())
    }

    /// Red team: a NUL in an environment value became options of bwrap's (`--bind / /host`).
    #[test]
    fn a_nul_in_the_environment_adds_no_option() -> Result {
        let Some(bwrap) = bwrap_or_skip() else { return Ok(()) };
        let l = layout("nul")?;
        let sandbox = make(&bwrap, &l.workdir, &l.scratch, false)?;
        let escape = format!("a\0--bind\0/\0/host\0--setenv\0B\0{}", l.base.display());
        let env = BTreeMap::from([("X".to_owned(), escape)]);
        let (ending, out) = run_in(&sandbox, &l.workdir, "ls /host && echo ESCAPED", &env);
        assert!(matches!(ending, Ending::NotStarted(ref why) if why.contains("NUL")), "{ending:?} {out}");
        assert!(!out.contains("ESCAPED"), "{out}");
        std::fs::remove_dir_all(&l.base)?;
        Ok(())
    }

    #[test]
    fn the_steps_environment_reaches_the_step_not_bwrap() -> Result {
        let Some(bwrap) = bwrap_or_skip() else { return Ok(()) };
        let l = layout("env")?;
        let sandbox = make(&bwrap, &l.workdir, &l.scratch, false)?;
        // bwrap runs outside the sandbox: a recipe's LD_PRELOAD must not be in its environment.
        let preload = (OsStr::new("LD_PRELOAD"), OsStr::new("/checkout/evil.so"));
        let mut p = sandbox.command(&l.workdir, "true", [preload].into_iter())?;
        assert_eq!(p.command.get_envs().filter(|(_, v)| v.is_some()).count(), 0, "bwrap gets no environment");
        let mut options = Vec::new();
        std::io::Read::read_to_end(&mut p.options[0], &mut options)?;
        let options: Vec<&[u8]> = options.split(|b| *b == 0).collect();
        assert!(options.windows(3).any(|w| w == [&b"--setenv"[..], b"LD_PRELOAD", b"/checkout/evil.so"]));
        // And the step sees exactly what it was given.
        let env = BTreeMap::from([("GREETING".to_owned(), "hi there".to_owned())]);
        let (ending, out) = run_in(&sandbox, &l.workdir, "echo \"$GREETING\"; echo done", &env);
        assert_all_passed(&ending, &out);
        assert!(out.starts_with("hi there\n"), "{out}");
        std::fs::remove_dir_all(&l.base)?;
        Ok(())
    }

    #[test]
    fn a_workdir_made_after_the_check_is_used() -> Result {
        let Some(bwrap) = bwrap_or_skip() else { return Ok(()) };
        let l = layout("later")?;
        // The first build clones into a workdir that does not exist yet.
        let later = l.workdir.with_file_name("later");
        let sandbox = make(&bwrap, &later, &l.scratch, false)?;
        std::fs::create_dir(&later)?;
        let (ending, out) = run_in(&sandbox, &later, "echo built > out && pwd", &BTreeMap::new());
        assert_eq!((ending, out), (Ending::Exited(0), "/work\n".to_owned()));
        assert_eq!(std::fs::read_to_string(later.join("out"))?, "built\n");
        std::fs::remove_dir_all(&l.base)?;
        Ok(())
    }

    #[test]
    fn without_bwrap_the_message_says_how_to_install_it() -> Result {
        let l = layout("missing")?;
        let err = make(Path::new("/nonexistent/bwrap"), &l.workdir, &l.scratch, false)
            .err()
            .ok_or("a missing bwrap made a sandbox")?
            .to_string();
        assert!(err.contains("not installed") && err.contains("apt-get install bubblewrap"), "{err}");
        assert!(err.contains("dnf install bubblewrap") && err.contains("sandbox = \"none\""), "{err}");
        std::fs::remove_dir_all(&l.base)?;
        Ok(())
    }
    #[test]
    fn a_refused_namespace_gets_the_fix_for_this_machine() {
        let bwrap = Path::new("/usr/bin/bwrap");
        let apparmor = diagnose(bwrap, "bwrap: setting up uid map: Permission denied\n", |name| {
            (name == "kernel.apparmor_restrict_unprivileged_userns").then(|| "1".to_owned())
        });
        assert!(apparmor.contains("setting up uid map: Permission denied"), "{apparmor}");
        assert!(apparmor.contains("kernel.apparmor_restrict_unprivileged_userns=0"), "{apparmor}");
        assert!(apparmor.contains("AppArmor profile") && apparmor.contains("sandbox = \"none\""), "{apparmor}");
        let debian = diagnose(bwrap, "bwrap: No permissions to creating new namespace", |name| {
            (name == "kernel.unprivileged_userns_clone").then(|| "0".to_owned())
        });
        assert!(debian.contains("kernel.unprivileged_userns_clone=1") && !debian.contains("AppArmor"), "{debian}");
        let unknown = diagnose(bwrap, "", |_| None);
        assert!(unknown.contains("no message") && unknown.contains("user.max_user_namespaces"), "{unknown}");
        assert!(unknown.contains("sandbox = \"none\""), "{unknown}");
    }

    #[test]
    fn mode_reads_from_the_config() -> std::result::Result<(), toml::de::Error> {
        #[derive(serde::Deserialize)]
        struct Config {
            #[serde(default)]
            sandbox: Mode,
        }
        assert_eq!(toml::from_str::<Config>("")?.sandbox, Mode::Auto);
        assert_eq!(toml::from_str::<Config>("sandbox = \"auto\"")?.sandbox, Mode::Auto);
        assert_eq!(toml::from_str::<Config>("sandbox = \"none\"")?.sandbox, Mode::None);
        assert!(toml::from_str::<Config>("sandbox = \"off\"").is_err());
        Ok(())
    }
}
