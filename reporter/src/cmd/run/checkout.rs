//! Updating the source before a build: clone, or fetch and check out a branch (and a requested
//! revision), with git run outside the sandbox. Every name that came from outside arrives as a
//! [`BranchName`] or a [`Revision`], checked when it was read (neither can start with `-`), and
//! git is told where its options end: `--end-of-options` before positional names, `--` after
//! the revision of a checkout (the form git 2.39, Debian 12's, accepts there), or the name as an
//! option's own value (`--branch=…`, `-B …`). No value can become an option of git's
//! (`--upload-pack=…` runs a program).

use std::io::Read;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use chrono::Utc;
use tbox_protocol::{BranchName, BuildResult, Revision, Step};

use crate::sandbox::disk;
use crate::{config, runner};

/// How git runs for a checkout.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Git {
    /// The volunteer's own project: their git config and credentials apply (a private repo
    /// of theirs is fine).
    Own,
    /// A recipe's source: the URL is the project's, so git gets none of the volunteer's
    /// config, credentials, ssh keys or agent; and the tree is cleaned of what earlier builds
    /// left, so that a planted file cannot steer later builds.
    Recipe,
}

/// The longest a clone or fetch may take; a stalled server must not hold the project's lock
/// forever.
const GIT_TIMEOUT: Duration = Duration::from_secs(3600);

/// Clones, or fetches and checks out `branch`. Returns the step to report and whether it worked.
///
/// `url` is the config's `git` or the recipe's `repo`, both refused when they start with `-`.
/// `disk`: the most the checkout may take (the build's disk limit); git is stopped past it.
pub(super) fn checkout(
    url: &str,
    branch: &BranchName,
    revision: Option<&Revision>,
    workdir: &Path,
    how: Git,
    disk: u64,
) -> (Step, bool) {
    let start = Utc::now().fixed_offset();
    let mut log = String::new();
    let git = |args: &[&str], dir: &Path, log: &mut String| git(args, dir, how, (workdir, disk), log);
    // What builds left: a directory they made unreadable would stop `git clean` (and keep a
    // planted file for the next build).
    if how == Git::Recipe && workdir.join(".git").is_dir() && disk::needs_fixing(workdir) {
        let _ = disk::make_accessible(workdir);
    }
    let (branch, branch_opt) = (branch.as_str(), format!("--branch={branch}"));
    // Fetched from the URL itself, not from `origin`: the source is the one the config or the
    // recipe names, whatever a build may have left in the checkout's remotes.
    // What the last build left goes first: it is not the project's, and must not count against
    // the update's disk limit. Where git cannot clean it (a tree deeper than a path may be
    // long), the checkout goes whole: for a recipe it holds nothing a build may keep anyway.
    if how == Git::Recipe && workdir.join(".git").is_dir() && !git(&["clean", "-ffdxq"], workdir, &mut log) {
        log.push_str("[tbox-report] what the last build left could not be cleaned; the checkout is made afresh\n");
        if let Err(e) = disk::remove_tree(workdir) {
            log.push_str(&format!("[tbox-report] cannot remove the checkout: {e}\n"));
        }
    }
    let ok = if workdir.join(".git").is_dir() {
        git(&["fetch", "--quiet", "--no-recurse-submodules", "--end-of-options", url, branch], workdir, &mut log)
            // `--` ends the revisions (git before 2.42 takes no `--end-of-options` here); the
            // branch is a checked name given as -B's value.
            && git(&["checkout", "--quiet", "--force", "-B", branch, "FETCH_HEAD", "--"], workdir, &mut log)
            && (how == Git::Own || git(&["clean", "-ffdxq"], workdir, &mut log))
    } else {
        let parent = workdir.parent().unwrap_or(Path::new("/"));
        let _ = std::fs::create_dir_all(parent);
        let target = workdir.to_string_lossy();
        git(&["clone", "--quiet", &branch_opt, "--", url, &target], parent, &mut log)
    };
    // A request may name a commit of the branch.
    let ok = ok
        && revision.is_none_or(|rev| {
            git(&["checkout", "--quiet", "--force", "--detach", rev.as_str(), "--"], workdir, &mut log)
        });
    // The log goes to the server: it says where the checkout is, not where the volunteer keeps it.
    let log = hide_paths(&log, workdir);
    let step = Step {
        name: "checkout".into(),
        result: if ok { BuildResult::Success } else { BuildResult::Exception },
        started_at: start,
        finished_at: Utc::now().fixed_offset(),
        exit_code: None,
        kind: None,
        log: Some(log),
        log_truncated: false,
    };
    (step, ok)
}

/// Why a checkout failed, in one line for the volunteer: git's last words, and what to do when
/// the cause is one tbox-report makes on purpose (none of the volunteer's git config or
/// credentials for a recipe's source).
pub(super) fn failure(log: &str, how: Git) -> String {
    let said = log
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty() && !l.starts_with("$ "))
        .unwrap_or("git said nothing")
        .trim()
        .to_owned();
    let recipe = how == Git::Recipe;
    let hint = if said.contains("dubious ownership") {
        if recipe {
            "the repository belongs to another user; tbox-report runs git for a recipe without your git config \
             (no safe.directory applies, on purpose): the project should serve it over https or ssh, or the file:// \
             repository must be yours"
        } else {
            "the repository belongs to another user: mark it safe with `git config --global --add safe.directory \
             PATH`, or own it"
        }
    } else if recipe
        && (said.contains("Authentication")
            || said.contains("could not read Username")
            || said.contains("Permission denied (publickey"))
    {
        "tbox-report gives git none of your credentials, ssh keys or agent for a recipe's source (on purpose): \
         the repository must be readable by anyone"
    } else if said.contains("Could not resolve host")
        || said.contains("unable to access")
        || said.contains("Connection refused")
    {
        "the repository cannot be reached from here now; the next run tries again"
    } else if said.contains("not found in upstream") || said.contains("couldn't find remote ref") {
        "the branch does not exist in the repository"
    } else {
        "the build's checkout log on the server has git's whole answer"
    };
    crate::client::printable(&format!("{said} ({hint})"))
}

/// The checkout's path as `<workdir>` and the volunteer's HOME as `~`: a report tells the
/// project what was built, not the volunteer's user name and directories.
fn hide_paths(log: &str, workdir: &Path) -> String {
    let mut log = log.replace(workdir.to_string_lossy().as_ref(), "<workdir>");
    if let Some(home) = std::env::var_os("HOME").map(|h| h.to_string_lossy().into_owned()).filter(|h| h.len() > 1) {
        log = log.replace(&home, "~");
    }
    log
}

/// Runs git with a scrubbed environment, logging what it says; false if it failed, ran out of
/// time, or made `watched.0` take more than `watched.1` bytes.
fn git(args: &[&str], dir: &Path, how: Git, watched: (&Path, u64), log: &mut String) -> bool {
    log.push_str(&format!("$ git {}\n", args.join(" ")));
    let mut cmd = std::process::Command::new("git");
    // Git runs outside the sandbox: hooks in the checkout (a build could have written them,
    // were `.git` writable to it) must not run here. Nor may git step into a submodule's
    // directory: only the checkout's own `.git` is read-only to a build, so a repository there
    // is the build's, with whatever `uploadpack` or `sshCommand` its config names. A server
    // that stalls is given up on.
    cmd.args(["-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false"])
        .args(["-c", "submodule.recurse=false", "-c", "fetch.recurseSubmodules=false"])
        .args(["-c", "http.lowSpeedLimit=1000", "-c", "http.lowSpeedTime=300"])
        .current_dir(dir)
        .env_clear()
        .env("GIT_TERMINAL_PROMPT", "0");
    for name in runner::INHERITED {
        if let Some(v) = std::env::var_os(name) {
            cmd.env(name, v);
        }
    }
    if how == Git::Recipe {
        // Only the transports that fetch: none that runs a program (ext::, fd::, remote helpers),
        // whatever the URL says.
        cmd.args(["-c", "protocol.allow=never"]);
        for p in ["file", "git", "http", "https", "ssh"] {
            cmd.args(["-c", &format!("protocol.{p}.allow=always")]);
        }
        let home = config::state_dir().join("git-home");
        let _ = std::fs::create_dir_all(&home);
        cmd.args(["-c", "credential.helper="])
            .env("HOME", &home)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            // ssh reads ~/.ssh from the password database, not $HOME: say no keys, no agent.
            .env(
                "GIT_SSH_COMMAND",
                "ssh -F /dev/null -o BatchMode=yes -o IdentitiesOnly=yes -o IdentityFile=/dev/null -o IdentityAgent=none",
            );
    }
    cmd.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            log.push_str(&format!("[tbox-report] cannot run git: {e}\n"));
            return false;
        }
    };
    // Both pipes drained while waiting, so a chatty git cannot block on a full pipe.
    let readers: Vec<_> = [
        child.stdout.take().map(|o| Box::new(o) as Box<dyn Read + Send>),
        child.stderr.take().map(|e| Box::new(e) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .flatten()
    .map(|mut r| {
        std::thread::spawn(move || {
            let mut out = Vec::new();
            let _ = r.read_to_end(&mut out);
            out
        })
    })
    .collect();
    let deadline = std::time::Instant::now() + GIT_TIMEOUT;
    let meter = disk::Meter::new(vec![watched.0.to_owned()], None);
    let mut next_look = std::time::Instant::now() + Duration::from_secs(1);
    let mut too_big = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if std::time::Instant::now() < deadline && !too_big => {
                std::thread::sleep(Duration::from_millis(100));
                if std::time::Instant::now() >= next_look {
                    // A repository larger than the disk limit must not fill the disk before the
                    // first step's limit could stop it.
                    let started = std::time::Instant::now();
                    too_big = meter.usage() > watched.1;
                    next_look = std::time::Instant::now() + (started.elapsed() * 10).max(Duration::from_secs(1));
                }
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    for r in readers {
        if let Ok(out) = r.join() {
            log.push_str(&String::from_utf8_lossy(&out));
        }
    }
    // Between two looks git may have finished writing past the limit.
    let status = status.filter(|_| {
        too_big = too_big || meter.usage() > watched.1;
        !too_big
    });
    match status {
        Some(s) => s.success(),
        None if too_big => {
            log.push_str(&format!(
                "[tbox-report] the checkout passed the disk limit {} and git was stopped\n",
                tbox_protocol::human_size(watched.1)
            ));
            false
        }
        None => {
            log.push_str(&format!("[tbox-report] git took longer than {} s and was stopped\n", GIT_TIMEOUT.as_secs()));
            false
        }
    }
}
