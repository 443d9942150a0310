//! `tbox-report run`: the cron entry point. Per project: take the lock, flush the spool,
//! update the source, skip an unchanged revision, report `started`, run the steps, collect
//! test results, and deliver (or spool) the signed `finished` report.

use std::fs::{File, TryLockError};
use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use chrono::Utc;
use indicatif::{ProgressBar, ProgressStyle};
use tbox_protocol::{BuildResult, BuildState, FORMAT, Report, Step, StepKind};

use crate::cli::RunArgs;
use crate::client::{Client, Sent};
use crate::config::{self, Config, Project};
use crate::runner::{self, Ending, Spec};
use crate::{exit, junit, props, spool};

pub fn run(args: &RunArgs) -> anyhow::Result<u8> {
    let (config, client) = super::load(&args.common)?;
    let projects: Vec<&Project> = match &args.project {
        Some(name) => vec![config.project(name)?],
        None => config.projects.iter().collect(),
    };
    anyhow::ensure!(!projects.is_empty(), "the config has no [[project]] to build");
    let mut code = exit::OK;
    for project in projects {
        code = exit::worst(code, run_project(&config, &client, project, args)?);
    }
    Ok(code)
}

/// The revision last reported for a project, if any.
pub fn last_revision(project: &str) -> Option<String> {
    std::fs::read_to_string(revision_file(project)).ok().map(|s| s.trim().to_owned()).filter(|s| !s.is_empty())
}

fn revision_file(project: &str) -> PathBuf {
    config::state_dir().join("last-revision").join(project)
}

fn run_project(config: &Config, client: &Client, project: &Project, args: &RunArgs) -> anyhow::Result<u8> {
    let verbose = args.common.verbose;
    let state = config::state_dir();
    std::fs::create_dir_all(state.join("locks")).with_context(|| format!("cannot create {}", state.display()))?;
    let lock_path = state.join("locks").join(format!("{}.lock", project.name));
    let lock = File::create(&lock_path).with_context(|| format!("cannot create {}", lock_path.display()))?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            eprintln!("tbox-report: another run is building {}; skipping", project.name);
            return Ok(exit::OK);
        }
        Err(TryLockError::Error(e)) => {
            return Err(e).context(format!("cannot lock {}", lock_path.display()));
        }
    }

    // Results of earlier runs go first, in order.
    let flushed = spool::flush(&config.spool_dir(), client)?;
    if verbose && flushed.delivered > 0 {
        eprintln!("tbox-report: delivered {} spooled report(s)", flushed.delivered);
    }
    // Reports still waiting make this run's outcome "spooled", even if it builds nothing; a
    // damaged one set aside (the message is printed already) makes it "error here".
    let waiting = match &flushed.last_error {
        Some(e) => {
            eprintln!(
                "tbox-report: {e}; {} earlier report(s) still wait in {}",
                flushed.waiting,
                config.spool_dir().display()
            );
            exit::SPOOLED
        }
        None => exit::OK,
    };
    let floor = exit::worst(waiting, if flushed.corrupt > 0 { exit::ERROR } else { exit::OK });

    let workdir = config::expand(&project.workdir);
    let started_at = Utc::now();
    let mut steps = Vec::new();
    let checkout = project.git.as_ref().map(|url| checkout(url, &project.branch, &workdir));
    if let Some((step, ok)) = &checkout {
        if !ok {
            // The source could not be updated: report it (the reporter's trouble, purple),
            // without a revision to skip on next time.
            let mut s = step.clone();
            s.started_at = started_at.fixed_offset();
            let report = finish(project, config, super::new_uuid(), "unknown".into(), started_at, vec![s], Vec::new());
            return Ok(exit::worst(floor, super::deliver(&report, client, &config.spool_dir(), verbose)?));
        }
        steps.push(step.clone());
    }
    let revision = super::git_revision(&workdir);
    if let Some(rev) = &revision
        && !args.force
        && last_revision(&project.name).as_deref() == Some(rev.as_str())
    {
        if verbose {
            eprintln!(
                "tbox-report: {} is at {rev}, already reported; nothing to do (--force builds anyway)",
                project.name
            );
        }
        return Ok(floor);
    }
    let revision = revision.unwrap_or_else(|| "unversioned".into());
    let uuid = super::new_uuid();

    // Best effort, so the waterfall shows the build as running; never spooled.
    let started = Report {
        format: FORMAT.into(),
        uuid: uuid.clone(),
        project: project.name.clone(),
        builder: config.builder.clone(),
        state: BuildState::Started,
        result: None,
        branch: project.branch.clone(),
        revision: revision.clone(),
        started_at: started_at.fixed_offset(),
        finished_at: None,
        steps: Vec::new(),
        tests: Vec::new(),
        properties: props::detect(&project.properties),
        reporter: crate::REPORTER.into(),
    };
    if let Sent::Rejected { status, message } = client.submit_once(&serde_json::to_vec(&started)?) {
        eprintln!("tbox-report: the server refused the started report for {} ({status}): {message}", project.name);
    }

    let scratch = state.join("work").join(&uuid);
    std::fs::create_dir_all(&scratch)?;
    let progress = progress_bar();
    let mut tests = Vec::new();
    let mut stop = false;
    for (i, cfg) in project.steps.iter().enumerate() {
        let kind = cfg.kind.as_deref().and_then(StepKind::parse);
        if stop {
            let now = Utc::now().fixed_offset();
            steps.push(Step {
                name: cfg.name.clone(),
                result: BuildResult::Skipped,
                started_at: now,
                finished_at: now,
                exit_code: None,
                kind,
                log: None,
                log_truncated: false,
            });
            continue;
        }
        let step_start = Utc::now();
        let since = SystemTime::now() - Duration::from_secs(2);
        let log_path = scratch.join(format!("step-{i}.log"));
        let log = File::create(&log_path)?;
        let mut env = project.env.clone();
        env.extend(cfg.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        let spec = Spec {
            command: &cfg.run,
            workdir: &workdir,
            env: &env,
            timeout: cfg.timeout(),
            // Far above what is kept, but a loop printing forever must not fill the disk.
            max_output: config.max_log_bytes.saturating_mul(64).max(256 << 20),
        };
        let ending = runner::run(&spec, &log, |elapsed| {
            if let Some(bar) = &progress {
                bar.set_message(format!("{}: {} ({}s)", project.name, cfg.name, elapsed.as_secs()));
                bar.tick();
            }
        });
        drop(log);
        let (mut text, truncated) = runner::read_capped(&log_path, config.max_log_bytes)?;
        let result = match &ending {
            Ending::Exited(0) => BuildResult::Success,
            Ending::Exited(_) | Ending::Signalled(_) => BuildResult::Failure,
            Ending::TimedOut(t) => {
                text.push_str(&format!(
                    "\n[tbox-report] the step timed out after {}s; its whole process group was killed\n",
                    t.as_secs()
                ));
                BuildResult::Failure
            }
            Ending::TooMuchOutput(n) => {
                text.push_str(&format!("\n[tbox-report] the step wrote {n} bytes of output and was stopped\n"));
                BuildResult::Failure
            }
            Ending::NotStarted(why) => {
                text.push_str(&format!("[tbox-report] {why}\n"));
                BuildResult::Exception
            }
        };
        if let Ending::Signalled(sig) = ending {
            text.push_str(&format!("\n[tbox-report] the step was killed by signal {sig}\n"));
        }
        if !cfg.junit.is_empty() {
            let (mut found, notes) = junit::collect(&workdir, &cfg.junit, Some(since));
            tests.append(&mut found);
            for n in notes {
                text.push_str(&format!("\n[tbox-report] {n}\n"));
            }
        }
        if verbose {
            eprintln!("tbox-report: {}: step {} → {}", project.name, cfg.name, result);
        }
        if result != BuildResult::Success && !cfg.continue_on_failure {
            stop = true;
        }
        steps.push(Step {
            name: cfg.name.clone(),
            result,
            started_at: step_start.fixed_offset(),
            finished_at: Utc::now().fixed_offset(),
            exit_code: ending.exit_code(),
            kind,
            log: Some(text),
            log_truncated: truncated,
        });
    }
    if let Some(bar) = progress {
        bar.finish_and_clear();
    }
    let _ = std::fs::remove_dir_all(&scratch);

    let report = finish(project, config, uuid, revision.clone(), started_at, steps, tests);
    let delivered = super::deliver(&report, client, &config.spool_dir(), verbose)?;
    let code = exit::worst(floor, delivered);
    if delivered == exit::OK || delivered == exit::SPOOLED {
        // Delivered or safely spooled: this revision is reported. (Refused: it is not, and a
        // report lost on a full disk is not either: the next run builds it again.)
        let path = revision_file(&project.name);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&path, format!("{revision}\n"))?;
    }
    Ok(code)
}

/// The finished report; the overall result follows the steps.
fn finish(
    project: &Project,
    config: &Config,
    uuid: String,
    revision: String,
    started_at: chrono::DateTime<Utc>,
    steps: Vec<Step>,
    tests: Vec<tbox_protocol::TestResult>,
) -> Report {
    let result = if steps.iter().any(|s| s.result == BuildResult::Exception) {
        BuildResult::Exception
    } else if steps.iter().any(|s| s.result == BuildResult::Failure) {
        BuildResult::Failure
    } else {
        BuildResult::Success
    };
    Report {
        format: FORMAT.into(),
        uuid,
        project: project.name.clone(),
        builder: config.builder.clone(),
        state: BuildState::Finished,
        result: Some(result),
        branch: project.branch.clone(),
        revision,
        started_at: started_at.fixed_offset(),
        finished_at: Some(Utc::now().fixed_offset()),
        steps,
        tests,
        properties: props::detect(&project.properties),
        reporter: crate::REPORTER.into(),
    }
}

/// Clones, or fetches and checks out `branch`. Returns the step to report and whether it worked.
fn checkout(url: &str, branch: &str, workdir: &Path) -> (Step, bool) {
    let start = Utc::now().fixed_offset();
    let mut log = String::new();
    let ok = if workdir.join(".git").is_dir() {
        git(&["fetch", "--quiet", "origin", branch], workdir, &mut log)
            && git(&["checkout", "--quiet", "--force", "-B", branch, "FETCH_HEAD"], workdir, &mut log)
    } else {
        let parent = workdir.parent().unwrap_or(Path::new("/"));
        let _ = std::fs::create_dir_all(parent);
        let target = workdir.to_string_lossy();
        git(&["clone", "--quiet", "--branch", branch, url, &target], parent, &mut log)
    };
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

/// Runs git with the same scrubbed environment as the steps, logging what it says.
fn git(args: &[&str], dir: &Path, log: &mut String) -> bool {
    log.push_str(&format!("$ git {}\n", args.join(" ")));
    let mut cmd = std::process::Command::new("git");
    cmd.args(args).current_dir(dir).env_clear().env("GIT_TERMINAL_PROMPT", "0");
    for name in runner::INHERITED {
        if let Some(v) = std::env::var_os(name) {
            cmd.env(name, v);
        }
    }
    match cmd.output() {
        Ok(out) => {
            log.push_str(&String::from_utf8_lossy(&out.stdout));
            log.push_str(&String::from_utf8_lossy(&out.stderr));
            out.status.success()
        }
        Err(e) => {
            log.push_str(&format!("[tbox-report] cannot run git: {e}\n"));
            false
        }
    }
}

/// A spinner on a terminal; nothing under cron.
fn progress_bar() -> Option<ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = ProgressBar::new_spinner();
    bar.set_style(ProgressStyle::with_template("{spinner} {msg}").unwrap_or_else(|_| ProgressStyle::default_spinner()));
    Some(bar)
}
