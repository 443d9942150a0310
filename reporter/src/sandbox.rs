//! The bubblewrap sandbox build steps run in. A recipe comes from the project, not from the
//! volunteer, so a step must not see the volunteer's keys, config or dotfiles, nor write
//! outside its checkout, nor reach the network unless both sides allow it.
//!
//! The sandbox starts from an empty root and adds only: the system directories read-only
//! (`/usr`, `/etc`, …, with the files of `/etc` that not everyone may read masked), a new
//! `/proc` and `/dev`, private `/tmp`, `/var/tmp` and `/run`, the workdir read-write and a scratch
//! HOME read-write, both at their own paths so that paths mean the same inside and out. Every
//! namespace is new (user, pid, network, ipc, uts, cgroup); the network one is kept only when
//! network is allowed. Capabilities are dropped, so a reporter running as root does not hand root
//! powers to the build.

use std::ffi::{OsStr, OsString};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::unistd::Pid;

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
    /// Everything before `--chdir`: the runner adds the directory and the command.
    args: Vec<OsString>,
    home: PathBuf,
    network: bool,
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

impl Sandbox {
    /// Finds bwrap and checks, by really starting a trivial sandbox with the same options, that it
    /// works here.
    ///
    /// `workdir`: the only writable place besides a private /tmp (bound read-write at the same
    /// path); it need not exist yet (a first clone), the check then binds only `home`. `home`: an
    /// empty scratch directory (created if missing) that becomes $HOME inside (bound at the same
    /// path, so the runner can set HOME to it). `network`: whether steps may use the network.
    pub fn new(workdir: &Path, home: &Path, network: bool) -> Result<Sandbox, Unavailable> {
        match find_bwrap() {
            Some(program) => Sandbox::with_program(&program, workdir, home, network),
            None => Err(not_installed()),
        }
    }

    /// [`Sandbox::new`] with a given bwrap, so that tests can point at one that is missing.
    pub(crate) fn with_program(
        program: &Path,
        workdir: &Path,
        home: &Path,
        network: bool,
    ) -> Result<Sandbox, Unavailable> {
        std::fs::create_dir_all(home)
            .map_err(|e| Unavailable(format!("cannot create the sandbox's scratch home {}: {e}", home.display())))?;
        // Only the volunteer should see what builds leave there.
        let _ = std::fs::set_permissions(home, std::fs::Permissions::from_mode(0o700));
        let home = real_path(home);
        let workdir = real_path(workdir);
        if workdir == Path::new("/") || home == Path::new("/") {
            return Err(Unavailable("the workdir and the sandbox home cannot be / (it would all be writable)".into()));
        }
        let sandbox = Sandbox {
            program: program.to_owned(),
            args: sandbox_args(Some(&workdir), &home, network),
            home: home.clone(),
            network,
        };
        // A missing workdir cannot be bound yet; the check is about namespaces and mounts anyway.
        let (args, dir) =
            if workdir.is_dir() { (sandbox.args.clone(), workdir) } else { (sandbox_args(None, &home, network), home) };
        let probe = Command::new(program)
            .args(&args)
            .arg("--chdir")
            .arg(&dir)
            .args(["--", "sh", "-c", "exit 0"])
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output();
        match probe {
            Ok(out) if out.status.success() => Ok(sandbox),
            Ok(out) => Err(Unavailable(diagnose(program, &String::from_utf8_lossy(&out.stderr), read_sysctl))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(not_installed()),
            Err(e) => Err(Unavailable(format!("cannot start {}: {e}; {OPT_OUT}", program.display()))),
        }
    }

    /// What to write into the report's `sandbox` field.
    pub fn describe(&self) -> &'static str {
        if self.network { "bubblewrap+network" } else { "bubblewrap" }
    }

    /// The scratch HOME, for the runner to put into HOME.
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// `bwrap <options> --setenv … --chdir <dir> -- sh -c <command>`.
    ///
    /// The step's environment goes in through `--setenv`, never into bwrap's own process:
    /// bwrap runs outside the sandbox, and a recipe's `LD_PRELOAD` or `LD_LIBRARY_PATH`
    /// pointing into the checkout would run the project's code there. bwrap itself gets an
    /// empty environment (it is started by absolute path and needs none).
    pub(crate) fn command<'e>(
        &self,
        dir: &Path,
        command: &str,
        env: impl IntoIterator<Item = (&'e OsStr, &'e OsStr)>,
    ) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.env_clear().args(&self.args);
        for (k, v) in env {
            cmd.arg("--setenv").arg(k).arg(v);
        }
        cmd.arg("--chdir").arg(real_path(dir)).args(["--", "sh", "-c", command]);
        cmd
    }
}

/// The process group of the step in the sandbox whose outer bwrap is `bwrap`: the one of
/// bwrap's only child, the namespace's pid 1, which made a new session for the step
/// (`--new-session`). None until the sandbox is set up.
pub(crate) fn step_group(bwrap: u32) -> Option<Pid> {
    let bwrap = i32::try_from(bwrap).ok()?;
    // Scanning /proc works without the kernel's optional `task/*/children` files.
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|entry| {
        let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
        // `pid (comm) state ppid pgrp …`; comm may hold spaces and parentheses.
        let mut fields = stat.get(stat.rfind(')')? + 1..)?.split_whitespace().skip(1);
        let ppid: i32 = fields.next()?.parse().ok()?;
        let pgrp: i32 = fields.next()?.parse().ok()?;
        (ppid == bwrap && pgrp > 0).then(|| Pid::from_raw(pgrp))
    })
}

/// The bwrap options, without `--chdir` and the command. Without `workdir` (not there yet) it is
/// the same sandbox minus that bind.
fn sandbox_args(workdir: Option<&Path>, home: &Path, network: bool) -> Vec<OsString> {
    let mut a = Args(Vec::new());
    a.push(["--unshare-all"]);
    if network {
        a.push(["--share-net"]);
    }
    // If the reporter dies, nothing it started may run on; a new session keeps the step away
    // from the volunteer's terminal (TIOCSTI); without capabilities root inside is only a uid.
    a.push(["--die-with-parent", "--new-session", "--cap-drop", "ALL"]);
    for dir in SYSTEM_DIRS {
        let path = Path::new(dir);
        match std::fs::symlink_metadata(path) {
            // Merged /usr: /bin is a link to usr/bin; the same link inside keeps paths working.
            Ok(m) if m.file_type().is_symlink() => {
                if let Ok(target) = std::fs::read_link(path) {
                    a.push([OsString::from("--symlink"), target.into(), path.into()]);
                }
            }
            Ok(m) if m.is_dir() => a.bind("--ro-bind", path),
            _ => {}
        }
    }
    // Root (and group members) could read these on the host; the build is neither.
    for hidden in private_etc_entries() {
        if hidden.is_dir() {
            a.push([OsString::from("--tmpfs"), hidden.clone().into()]);
            a.push([OsString::from("--remount-ro"), hidden.into()]);
        } else {
            a.push([OsString::from("--ro-bind"), "/dev/null".into(), hidden.into()]);
        }
    }
    a.push(["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--tmpfs", "/var/tmp", "--tmpfs", "/run"]);
    if network {
        // With systemd-resolved, /etc/resolv.conf points into /run, which is otherwise private.
        if let Ok(resolv) = std::fs::canonicalize("/etc/resolv.conf")
            && resolv.starts_with("/run")
            && let Some(dir) = resolv.parent()
        {
            a.bind("--ro-bind", dir);
        }
    }
    // Outer directory first, so that one inside the other stays visible.
    let mut writable: Vec<&Path> = workdir.into_iter().chain([home]).collect();
    writable.sort_by_key(|p| p.components().count());
    for dir in writable {
        a.bind("--bind", dir);
    }
    // The checkout's git metadata is read-only: git runs outside the sandbox on the next update,
    // and a hook or config (core.fsmonitor, a filter) written into `.git` would run there.
    if let Some(git) = workdir.map(|w| w.join(".git")).filter(|g| g.is_dir()) {
        a.bind("--ro-bind", &git);
    }
    // The rest of the root is bwrap's scaffolding (mount points); a write there would vanish
    // silently, better that it fails.
    a.push(["--remount-ro", "/"]);
    a.0
}

/// Builds bwrap's argv.
struct Args(Vec<OsString>);

impl Args {
    fn push<S: Into<OsString>>(&mut self, items: impl IntoIterator<Item = S>) {
        self.0.extend(items.into_iter().map(Into::into));
    }

    /// `option path path`: everything is bound at its own path.
    fn bind(&mut self, option: &str, path: &Path) {
        self.push([OsString::from(option), path.into(), path.into()]);
    }
}

/// Entries of /etc that not everyone may read (shadow, TLS and SSH private keys, database
/// passwords…): a build sees only what any user of the machine could.
fn private_etc_entries() -> Vec<PathBuf> {
    let mut hidden = Vec::new();
    let mut walk = walkdir::WalkDir::new("/etc").min_depth(1).into_iter();
    while let Some(entry) = walk.next() {
        let Ok(entry) = entry else { continue };
        let Ok(meta) = entry.metadata() else { continue };
        let mode = meta.permissions().mode();
        if meta.is_dir() {
            // A directory others cannot enter hides everything below it.
            if mode & 0o005 != 0o005 {
                hidden.push(entry.into_path());
                walk.skip_current_dir();
            }
        } else if meta.is_file() && mode & 0o004 == 0 {
            hidden.push(entry.into_path());
        }
    }
    hidden
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

    use super::*;
    use crate::runner::{self, Ending, Spec};

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
            println!("skipped: bubblewrap not installed");
        }
        found
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
        let spec = Spec { command, workdir, env, timeout, max_output: 1 << 20, sandbox: Some(sandbox) };
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
    /// checkout below it, a neighbour of the checkout, and a scratch HOME for builds.
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
        let sandbox = Sandbox::with_program(&bwrap, &l.workdir, &l.scratch, false)?;
        assert_eq!(sandbox.home(), l.scratch);
        let mut env = BTreeMap::from([
            ("FAKE_HOME".to_owned(), l.fake_home.display().to_string()),
            ("SCRATCH".to_owned(), l.scratch.display().to_string()),
        ]);
        // The real HOME is checked too, unless this test's files live below it.
        let real_home = std::env::var("HOME").ok().filter(|h| h != "/" && !l.base.starts_with(h));
        env.insert("REAL_HOME".to_owned(), real_home.unwrap_or_default());
        let script = r#"
            test -e "$FAKE_HOME/.ssh/id_ed25519" && fail "the key is visible: $(cat "$FAKE_HOME/.ssh/id_ed25519")"
            test -e "$FAKE_HOME/.config/tbox" && fail "the config is visible"
            test "$(ls -A "$FAKE_HOME")" = ".local" || fail "the volunteer's home shows: $(ls -A "$FAKE_HOME")"
            test "$(ls -A ..)" = "demo" || fail "next to the workdir: $(ls -A ..)"
            test "$(ls -A /root 2>/dev/null)" = "" || fail "/root shows: $(ls -A /root)"
            test "$(ls -A /home 2>/dev/null)" = "" || fail "/home shows: $(ls -A /home)"
            test -z "$REAL_HOME" || test "$(ls -A "$REAL_HOME" 2>/dev/null)" = "" || fail "$REAL_HOME shows: $(ls -A "$REAL_HOME")"
            echo "root: $(ls -A / | tr '\n' ' ')"
            test "$HOME" = "$SCRATCH" || fail "HOME is $HOME"
            echo built > "$HOME/.cache-test" || fail "HOME is not writable"
            test -r source.c || fail "the checkout is not readable"
            test "$(cat /etc/shadow 2>/dev/null)" = "" || fail "/etc/shadow is readable"
            echo done
        "#;
        let (ending, out) = run_in(&sandbox, &l.workdir, &format!("{FAIL}{script}"), &env);
        assert_all_passed(&ending, &out);
        // Bound at the same path: what the build left in its HOME is where the reporter looks.
        assert_eq!(std::fs::read_to_string(l.scratch.join(".cache-test"))?, "built\n");
        std::fs::remove_dir_all(&l.base)?;
        Ok(())
    }

    #[test]
    fn writes_stay_in_the_workdir_and_a_private_tmp() -> Result {
        let Some(bwrap) = bwrap_or_skip() else { return Ok(()) };
        let l = layout("writes")?;
        let sandbox = Sandbox::with_program(&bwrap, &l.workdir, &l.scratch, false)?;
        let tag = format!("tbox-sandbox-{}", std::process::id());
        let host_tmp = Path::new("/tmp").join(format!("{tag}-host"));
        std::fs::write(&host_tmp, "the host's /tmp")?;
        let env = BTreeMap::from([("TAG".to_owned(), tag.clone())]);
        let script = r#"
            for f in /etc/$TAG /usr/$TAG /usr/local/$TAG /$TAG /opt/$TAG /var/$TAG /proc/$TAG; do
                touch "$f" 2>/dev/null && fail "wrote $f"
            done
            echo escape > ../escape 2>/dev/null # on the host, the parent must stay untouched
            echo object > built.o || fail "cannot write in the workdir"
            mkdir -p sub/dir && echo x > sub/dir/f || fail "cannot make directories in the workdir"
            echo tmp > /tmp/$TAG-inside || fail "cannot write /tmp"
            echo tmp > /var/tmp/$TAG-inside || fail "cannot write /var/tmp"
            test -e /tmp/$TAG-host && fail "the host's /tmp is visible"
            echo done
        "#;
        let (ending, out) = run_in(&sandbox, &l.workdir, &format!("{FAIL}{script}"), &env);
        assert_all_passed(&ending, &out);
        assert_eq!(std::fs::read_to_string(l.workdir.join("built.o"))?, "object\n");
        assert!(l.workdir.join("sub/dir/f").is_file());
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
        let closed = Sandbox::with_program(&bwrap, &l.workdir, &l.scratch, false)?;
        assert_eq!(closed.describe(), "bubblewrap");
        let (ending, out) = run_in(&closed, &l.workdir, &command, &env);
        assert_eq!((ending, out.as_str()), (Ending::Exited(0), "no network\ndone\n"));
        let open = Sandbox::with_program(&bwrap, &l.workdir, &l.scratch, true)?;
        assert_eq!(open.describe(), "bubblewrap+network");
        let (ending, out) = run_in(&open, &l.workdir, &command, &env);
        assert_eq!((ending, out.as_str()), (Ending::Exited(0), "connected\ndone\n"));
        std::fs::remove_dir_all(&l.base)?;
        Ok(())
    }

    /// Processes whose command line contains `marker`, seen from the host.
    fn processes_with(marker: &str) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
        entries
            .flatten()
            .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
            .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
            .filter(|c| c.contains(marker))
            .collect()
    }

    #[test]
    fn nothing_outlives_its_step() -> Result {
        let Some(bwrap) = bwrap_or_skip() else { return Ok(()) };
        let l = layout("timeout")?;
        let sandbox = Sandbox::with_program(&bwrap, &l.workdir, &l.scratch, false)?;
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
    fn the_steps_environment_reaches_the_step_not_bwrap() -> Result {
        let Some(bwrap) = bwrap_or_skip() else { return Ok(()) };
        let l = layout("env")?;
        let sandbox = Sandbox::with_program(&bwrap, &l.workdir, &l.scratch, false)?;
        // bwrap runs outside the sandbox: a recipe's LD_PRELOAD must not be in its environment.
        let preload = (OsStr::new("LD_PRELOAD"), OsStr::new("/checkout/evil.so"));
        let cmd = sandbox.command(&l.workdir, "true", [preload]);
        assert_eq!(cmd.get_envs().filter(|(_, v)| v.is_some()).count(), 0, "bwrap gets no environment");
        let args: Vec<&OsStr> = cmd.get_args().collect();
        assert!(args.windows(3).any(|w| w == [OsStr::new("--setenv"), preload.0, preload.1]), "{args:?}");
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
        let sandbox = Sandbox::with_program(&bwrap, &later, &l.scratch, false)?;
        std::fs::create_dir(&later)?;
        let (ending, out) = run_in(&sandbox, &later, "echo built > out && pwd", &BTreeMap::new());
        assert_eq!((ending, out), (Ending::Exited(0), format!("{}\n", later.display())));
        assert_eq!(std::fs::read_to_string(later.join("out"))?, "built\n");
        std::fs::remove_dir_all(&l.base)?;
        Ok(())
    }

    #[test]
    fn without_bwrap_the_message_says_how_to_install_it() -> Result {
        let l = layout("missing")?;
        let err = Sandbox::with_program(Path::new("/nonexistent/bwrap"), &l.workdir, &l.scratch, false)
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
