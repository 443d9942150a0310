//! `tbox-report run`: the cron entry point. Per project: take the lock, flush the spool,
//! obtain the steps (the volunteer's own, or the project's recipe, verified against the pinned
//! key: `trust.rs`), update the source, skip an unchanged revision, make the sandbox, report
//! `started`, run the steps, collect test results, and deliver (or spool) the signed
//! `finished` report. A refused recipe or sandbox runs nothing: exit 5 and an `exception`
//! report, so that the project sees it.

use std::fs::{File, TryLockError};
use std::io::{IsTerminal as _, Read};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use chrono::Utc;
use indicatif::{ProgressBar, ProgressStyle};
use tbox_protocol::{BuildResult, BuildState, FORMAT, RecipeStep, Report, Step, StepKind};

use crate::cli::RunArgs;
use crate::client::{Client, Sent};
use crate::config::{self, Config, Mode, Project};
use crate::runner::{self, Ending, Spec};
use crate::sandbox::Sandbox;
use crate::trust::{self, NoRecipe, Verified};
use crate::{exit, junit, props, spool};

/// What a build of a project runs, and where its source comes from.
struct Plan {
    steps: Vec<RecipeStep>,
    /// The URL to clone or fetch, if any.
    source: Option<String>,
    recipe: Option<Verified>,
    /// Whether the steps get the network.
    network: bool,
}

pub fn run(args: &RunArgs) -> anyhow::Result<u8> {
    let (config, client) = super::load(&args.common)?;
    let projects: Vec<&Project> = match &args.project {
        Some(name) => vec![config.project(name)?],
        None => config.projects.iter().collect(),
    };
    anyhow::ensure!(!projects.is_empty(), "the config has no [[project]] to build");
    let standing = standing(&config, &client);
    let mut code = exit::OK;
    for project in projects {
        // Not allowed to report: the build would be thrown away, so it does not run.
        if let Some(why) = standing.as_ref().and_then(|s| s.refusal(&config, &project.name)) {
            eprintln!("tbox-report: {}: not built: {why}", project.name);
            code = exit::worst(code, exit::REJECTED);
            continue;
        }
        code = exit::worst(code, run_project(&config, &client, project, args.force, args.common.verbose, None)?);
    }
    Ok(code)
}

/// What the server says this builder may do; None when it cannot say now (then builds run and
/// their reports wait in the spool).
struct Standing {
    status: String,
    projects: Vec<String>,
    pending: Vec<String>,
}

fn standing(config: &Config, client: &Client) -> Option<Standing> {
    let strings = |v: &serde_json::Value| -> Vec<String> {
        v.as_array().map(|a| a.iter().filter_map(|p| p.as_str().map(str::to_owned)).collect()).unwrap_or_default()
    };
    match client.get_as_builder(&format!("/api/v1/builders/{}", config.builder)) {
        Sent::Delivered(v) => Some(Standing {
            status: v["status"].as_str().unwrap_or_default().to_owned(),
            projects: strings(&v["projects"]),
            pending: strings(&v["pending_projects"]),
        }),
        Sent::Rejected { status: 404, .. } => {
            Some(Standing { status: "unknown".into(), projects: Vec::new(), pending: Vec::new() })
        }
        _ => None,
    }
}

impl Standing {
    fn refusal(&self, config: &Config, project: &str) -> Option<String> {
        let (b, server) = (&config.builder, &config.server);
        let approve = format!("an admin of {server} runs `tbox-server builder approve {b}`");
        match self.status.as_str() {
            "unknown" => Some(format!(
                "builder {b} is not registered on {server} (tbox-report register --project {project}, or join)"
            )),
            "pending" => Some(format!("builder {b} is pending approval; {approve}")),
            "revoked" => Some(format!("builder {b} is revoked on {server}")),
            _ if self.pending.iter().any(|p| p == project) => {
                Some(format!("builder {b} asked to report for {project}, which waits for approval; {approve}"))
            }
            _ if !self.projects.iter().any(|p| p == project) => {
                Some(format!("builder {b} may not report for {project} on {server} (ask its admins)"))
            }
            _ => None,
        }
    }
}

/// The revision last reported for a project, if any.
pub fn last_revision(config: &Config, project: &str) -> Option<String> {
    last_built(config, project).map(|s| s.split(' ').next().unwrap_or_default().to_owned())
}

/// What was last built: the revision, and for a recipe build the recipe's digest after it (a
/// new recipe is worth a build even at the same revision).
fn last_built(config: &Config, project: &str) -> Option<String> {
    std::fs::read_to_string(config.project_state("last-revision", project))
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// A build a project asked for (a lease on one of its requests), rather than one of `run`'s
/// own: the request's branch and revision, and the lease its reports close.
#[derive(Debug, Clone)]
pub struct Job {
    pub branch: String,
    pub revision: Option<String>,
    pub lease: u64,
    /// The request as its project signed it, and the signature (none when an admin made it
    /// on the server). A revision is built only when a key this volunteer trusts asked for it.
    pub signed: Option<(String, String)>,
}

impl Job {
    /// The revision to build: the requested one if a project key trusted from the pin signed a
    /// request for exactly this branch and revision; otherwise none (the branch's head), and why.
    fn trusted_revision(&self, plan: &Plan) -> (Option<&str>, Option<String>) {
        let Some(rev) = self.revision.as_deref() else { return (None, None) };
        let signed = plan.recipe.as_ref().zip(self.signed.as_ref()).and_then(|(v, (body, sig))| {
            let asked: serde_json::Value = serde_json::from_str(body).ok()?;
            let same = asked["branch"] == self.branch.as_str() && asked["revision"] == rev;
            (same && v.signed_by_trusted(body.as_bytes(), sig)).then_some(rev)
        });
        match signed {
            Some(rev) => (Some(rev), None),
            None => (
                None,
                Some(format!(
                    "[tbox-report] the server asked for revision {rev}, but no key you trust signed a request for it: \
                     building the head of {} instead\n",
                    self.branch
                )),
            ),
        }
    }
}

/// Answers a lease without building: the project sees why on its request.
pub fn decline(
    config: &Config,
    client: &Client,
    project: &Project,
    job: &Job,
    why: &str,
    verbose: bool,
) -> anyhow::Result<u8> {
    let last = last_revision(config, &project.name).unwrap_or_else(|| "unknown".into());
    let requested = Project { branch: job.branch.clone(), ..project.clone() };
    refuse(config, client, &requested, ("declined", &last, Some(job.lease)), why, exit::OK, verbose)
}

/// Builds a leased request now, whatever was built before.
pub fn run_job(config: &Config, client: &Client, project: &Project, job: &Job, verbose: bool) -> anyhow::Result<u8> {
    run_project(config, client, project, true, verbose, Some(job))
}

fn run_project(
    config: &Config,
    client: &Client,
    project: &Project,
    force: bool,
    verbose: bool,
    job: Option<&Job>,
) -> anyhow::Result<u8> {
    // A request names its own branch: everything below builds that one.
    let requested;
    let project = match job {
        Some(j) => {
            requested = Project { branch: j.branch.clone(), ..project.clone() };
            &requested
        }
        None => project,
    };
    let lease = job.map(|j| j.lease);
    let state = config::state_dir();
    let lock_path = config.project_state("locks", &project.name).with_extension("lock");
    if let Some(dir) = lock_path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
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
    let plan = match plan(config, project, verbose) {
        Ok(plan) => plan,
        Err(Skip::Quietly(code)) => return Ok(exit::worst(floor, code)),
        Err(Skip::Refused(why)) => {
            // Nothing was fetched: the report names the revision built last, so that the
            // waterfall does not show a revision "unknown".
            let last = last_revision(config, &project.name).unwrap_or_else(|| "unknown".into());
            return refuse(config, client, project, ("recipe refused", &last, lease), &why, floor, verbose);
        }
    };
    let started_at = Utc::now();
    let mut steps = Vec::new();
    let how = if plan.recipe.is_some() { Git::Recipe } else { Git::Own };
    // Nothing the server alone says decides what runs: a revision needs a trusted signature.
    let (revision_wanted, untrusted) = job.map(|j| j.trusted_revision(&plan)).unwrap_or((None, None));
    let mut checkout = plan.source.as_ref().map(|url| checkout(url, &project.branch, revision_wanted, &workdir, how));
    if let (Some(note), Some((step, _))) = (&untrusted, &mut checkout) {
        eprint!("{note}");
        step.log.get_or_insert_with(String::new).insert_str(0, note);
    }
    if let Some((step, ok)) = &checkout {
        if !ok {
            // The source could not be updated: report it (the reporter's trouble, purple),
            // without a revision to skip on next time.
            let mut s = step.clone();
            s.started_at = started_at.fixed_offset();
            let mut report =
                finish(project, config, super::new_uuid(), "unknown".into(), started_at, vec![s], Vec::new());
            mark(&mut report, &plan, None, config.sandbox_for(project));
            report.lease = lease;
            return Ok(exit::worst(floor, super::deliver(&report, client, &config.spool_dir(), verbose)?));
        }
        steps.push(step.clone());
    }
    let revision = super::git_revision(&workdir);
    let build_key = revision.as_ref().map(|rev| match &plan.recipe {
        Some(v) => format!("{rev} recipe:{}", v.digest),
        None => rev.clone(),
    });
    if let Some(key) = &build_key
        && !force
        && last_built(config, &project.name).as_deref() == Some(key.as_str())
    {
        if verbose {
            eprintln!(
                "tbox-report: {} is at {}, already reported; nothing to do (--force builds anyway)",
                project.name,
                revision.as_deref().unwrap_or_default()
            );
        }
        return Ok(floor);
    }
    let revision = revision.unwrap_or_else(|| "unversioned".into());
    let uuid = super::new_uuid();
    let scratch = state.join("work").join(&uuid);
    std::fs::create_dir_all(&scratch)?;
    let _cleanup = RemoveOnDrop(scratch.clone());

    // No sandbox, no build: a recipe's steps come from the project, not from this volunteer.
    let sandbox = match config.sandbox_for(project) {
        Mode::None => None,
        Mode::Auto => match Sandbox::new(&workdir, &scratch.join("home"), plan.network) {
            Ok(s) => Some(s),
            Err(e) => {
                let why = format!("no sandbox could be made for the steps, so none ran: {e}");
                return refuse(config, client, project, ("no sandbox", &revision, lease), &why, floor, verbose);
            }
        },
    };
    if let Some(v) = &plan.recipe {
        // From now on an older recipe, or other bytes under this version, are refused here.
        trust::record_run(&config.server, &project.name, v)?;
    }
    forget_refusal(config, &project.name);

    // Best effort, so the waterfall shows the build as running; never spooled.
    let mut started = Report {
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
        properties: properties(config, project),
        reporter: crate::REPORTER.into(),
        recipe_version: None,
        recipe_key: None,
        sandbox: None,
        lease: None,
    };
    mark(&mut started, &plan, sandbox.as_ref(), config.sandbox_for(project));
    started.lease = lease;
    if let Sent::Rejected { status, message } = client.submit_once(&serde_json::to_vec(&started)?) {
        eprintln!("tbox-report: the server refused the started report for {} ({status}): {message}", project.name);
    }

    let progress = progress_bar();
    let mut tests = Vec::new();
    let mut stop = false;
    for (i, cfg) in plan.steps.iter().enumerate() {
        let kind = cfg.kind;
        if stop || runner::stopping() {
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
            timeout: cfg.timeout.as_deref().and_then(tbox_protocol::parse_duration).unwrap_or(config::DEFAULT_TIMEOUT),
            // Far above what is kept, but a loop printing forever must not fill the disk.
            max_output: config.max_log_bytes.saturating_mul(64).max(256 << 20),
            sandbox: sandbox.as_ref(),
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
            Ending::Cancelled => {
                text.push_str("\n[tbox-report] stopped: tbox-report was asked to stop (SIGTERM) during this step\n");
                BuildResult::Cancelled
            }
        };
        if let Ending::Signalled(sig) = ending {
            text.push_str(&format!("\n[tbox-report] the step was killed by signal {sig}\n"));
        }
        let mut result = result;
        if !cfg.junit.is_empty() {
            let mut found = junit::collect(&workdir, &cfg.junit, Some(since));
            tests.append(&mut found.results);
            for n in &found.notes {
                text.push_str(&format!("\n[tbox-report] {n}\n"));
            }
            // Results that could not be read are not a pass: the step fails, and says which
            // file and why (the log's brief on the build page shows these lines).
            for p in &found.problems {
                text.push_str(&format!("\n[tbox-report] error: {p}\n"));
            }
            if !found.problems.is_empty() && matches!(result, BuildResult::Success | BuildResult::Warnings) {
                result = BuildResult::Failure;
            }
            if found.matched == 0 {
                text.push_str(&format!(
                    "\n[tbox-report] warning: no JUnit file matched {}; no test results from this step\n",
                    cfg.junit.join(", ")
                ));
                if kind == Some(StepKind::Test) && result == BuildResult::Success {
                    result = BuildResult::Warnings;
                }
            }
        }
        if verbose {
            eprintln!("tbox-report: {}: step {} → {}", project.name, cfg.name, result);
        }
        if !matches!(result, BuildResult::Success | BuildResult::Warnings) && !cfg.continue_on_failure {
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

    let mut report = finish(project, config, uuid, revision.clone(), started_at, steps, tests);
    mark(&mut report, &plan, sandbox.as_ref(), config.sandbox_for(project));
    report.lease = lease;
    let delivered = super::deliver(&report, client, &config.spool_dir(), verbose)?;
    let code = exit::worst(floor, delivered);
    if delivered == exit::OK || delivered == exit::SPOOLED {
        // Delivered or safely spooled: this revision is reported. (Refused: it is not, and a
        // report lost on a full disk is not either: the next run builds it again.)
        let path = config.project_state("last-revision", &project.name);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&path, format!("{}\n", build_key.as_deref().unwrap_or(&revision)))?;
    }
    Ok(code)
}

/// Removes the build's scratch directory (logs, sandbox home) however the build ends.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Why a project is not built this time.
enum Skip {
    /// Nothing to say to the project (no recipe yet, unmet requirements, server away): the
    /// message is printed already; exit with this code.
    Quietly(u8),
    /// Refused: exit 5, and the project is told why.
    Refused(String),
}

/// The steps to run: the config's own, or the project's recipe once it passed every check.
fn plan(config: &Config, project: &Project, verbose: bool) -> Result<Plan, Skip> {
    let Some(pin) = &project.recipe else {
        let steps = project.steps.clone();
        return Ok(Plan { steps, source: project.git.clone(), recipe: None, network: config.network_for(project) });
    };
    let name = &project.name;
    let v = match trust::obtain(&trust::agent(), config.server.trim_end_matches('/'), name, pin) {
        Ok(v) => v,
        Err(NoRecipe::Refused(why)) => return Err(Skip::Refused(why)),
        Err(NoRecipe::NonePublished(why)) => {
            eprintln!("tbox-report: {why}; nothing to build");
            return Err(Skip::Quietly(exit::OK));
        }
        Err(NoRecipe::Unreachable(why)) => {
            eprintln!("tbox-report: {name}: {why}; nothing built");
            return Err(Skip::Quietly(exit::SPOOLED));
        }
    };
    if let Some(note) = &v.from_cache {
        eprintln!("tbox-report: {name}: {note} (version {}, signed by {})", v.recipe.version, v.key);
    }
    let r = &v.recipe;
    if !r.allows_branch(&project.branch) {
        return Err(Skip::Refused(format!(
            "the recipe (version {}) allows only the branches {}, and this machine is configured to build {:?}",
            r.version,
            r.branches.join(", "),
            project.branch
        )));
    }
    // The source is pinned too: the config's `git` (written by `join`), else the repository
    // this machine built from before. A recipe that switches it is refused.
    let (pinned, whence) = match (&project.git, trust::built_repo(&config.server, name)) {
        (Some(git), _) => (Some(git.clone()), "the config's `git`"),
        (None, built) => (built, "the repository this machine built it from so far"),
    };
    if let Some(pinned) = pinned
        && pinned != r.repo
    {
        return Err(Skip::Refused(format!(
            "the recipe (version {}) takes its source from {}, but {whence} is {pinned}; if the project did move \
             its repository, set `git = {:?}` in this project's [[project]] of the config",
            r.version, r.repo, r.repo
        )));
    }
    let missing: Vec<&str> =
        r.requires.iter().filter(|c| !config.capabilities.contains(c)).map(String::as_str).collect();
    if !missing.is_empty() {
        eprintln!(
            "tbox-report: {name}: skipped: recipe version {} requires {}, which this machine does not declare in \
             `capabilities`",
            r.version,
            missing.join(", ")
        );
        return Err(Skip::Quietly(exit::OK));
    }
    if r.network && !config.network_for(project) {
        eprintln!(
            "tbox-report: {name}: skipped: recipe version {} needs the network; set `allow_network = true` to \
             build it",
            r.version
        );
        return Err(Skip::Quietly(exit::OK));
    }
    if verbose {
        eprintln!("tbox-report: {name}: recipe version {} signed by {}", r.version, v.key);
    }
    let steps = r.steps.clone();
    Ok(Plan { steps, source: Some(r.repo.clone()), network: r.network, recipe: Some(v) })
}

/// Fills in what the report says about the recipe and the sandbox.
fn mark(report: &mut Report, plan: &Plan, sandbox: Option<&Sandbox>, mode: Mode) {
    if let Some(v) = &plan.recipe {
        report.recipe_version = Some(v.recipe.version);
        report.recipe_key = Some(v.key.clone());
    }
    report.sandbox = match (sandbox, mode) {
        (Some(s), _) => Some(s.describe().to_owned()),
        (None, Mode::None) => Some("none".to_owned()),
        // Not sandboxed because nothing ran (a refusal): say nothing.
        (None, Mode::Auto) => None,
    };
}

/// The properties of a report: the config's, what is detected, and the capabilities.
fn properties(config: &Config, project: &Project) -> std::collections::BTreeMap<String, String> {
    let mut p = props::detect(&project.properties);
    if !config.capabilities.is_empty() {
        p.insert("capabilities".into(), config.capabilities.join(" "));
    }
    p
}

/// Nothing runs. Says why, and tells the project with an `exception` report (once per reason,
/// so that a refusal repeated by cron does not fill the waterfall).
fn refuse(
    config: &Config,
    client: &Client,
    project: &Project,
    (step_name, revision, lease): (&str, &str, Option<u64>),
    why: &str,
    floor: u8,
    verbose: bool,
) -> anyhow::Result<u8> {
    eprintln!("tbox-report: {}: REFUSED, nothing was run: {why}", project.name);
    let marker = config.project_state("refused", &project.name);
    if lease.is_none() && std::fs::read_to_string(&marker).is_ok_and(|old| old == why) {
        if verbose {
            eprintln!("tbox-report: {}: the project was told of this refusal already", project.name);
        }
        return Ok(exit::worst(floor, exit::REFUSED));
    }
    let now = Utc::now();
    let step = Step {
        name: step_name.into(),
        result: BuildResult::Exception,
        started_at: now.fixed_offset(),
        finished_at: now.fixed_offset(),
        exit_code: None,
        kind: None,
        log: Some(format!(
            "[tbox-report] this volunteer refused to build, and ran nothing:\n{why}\n\nIf the project did not \
             publish this, its server or a path to it may have been tampered with.\n"
        )),
        log_truncated: false,
    };
    let mut report = finish(project, config, super::new_uuid(), revision.to_owned(), now, vec![step], Vec::new());
    // A leased build refused still answers its lease: the project sees why on the request.
    report.lease = lease;
    let delivered = super::deliver(&report, client, &config.spool_dir(), verbose)?;
    if delivered == exit::OK || delivered == exit::SPOOLED {
        if let Some(dir) = marker.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let _ = std::fs::write(&marker, why);
    }
    Ok(exit::worst(exit::worst(floor, delivered), exit::REFUSED))
}

/// A build ran: a later refusal is news again.
fn forget_refusal(config: &Config, project: &str) {
    let _ = std::fs::remove_file(config.project_state("refused", project));
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
    let result = if steps.iter().any(|s| s.result == BuildResult::Cancelled) {
        BuildResult::Cancelled
    } else if steps.iter().any(|s| s.result == BuildResult::Exception) {
        BuildResult::Exception
    } else if steps.iter().any(|s| s.result == BuildResult::Failure) {
        BuildResult::Failure
    } else if steps.iter().any(|s| s.result == BuildResult::Warnings) {
        BuildResult::Warnings
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
        properties: properties(config, project),
        reporter: crate::REPORTER.into(),
        recipe_version: None,
        recipe_key: None,
        sandbox: None,
        lease: None,
    }
}

/// How git runs for a checkout.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Git {
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
fn checkout(url: &str, branch: &str, revision: Option<&str>, workdir: &Path, how: Git) -> (Step, bool) {
    let start = Utc::now().fixed_offset();
    let mut log = String::new();
    // Fetched from the URL itself, not from `origin`: the source is the one the config or the
    // recipe names, whatever a build may have left in the checkout's remotes.
    let ok = if workdir.join(".git").is_dir() {
        git(&["fetch", "--quiet", url, branch], workdir, how, &mut log)
            && git(&["checkout", "--quiet", "--force", "-B", branch, "FETCH_HEAD"], workdir, how, &mut log)
            && (how == Git::Own || git(&["clean", "-ffdxq"], workdir, how, &mut log))
    } else {
        let parent = workdir.parent().unwrap_or(Path::new("/"));
        let _ = std::fs::create_dir_all(parent);
        let target = workdir.to_string_lossy();
        git(&["clone", "--quiet", "--branch", branch, "--", url, &target], parent, how, &mut log)
    };
    // A request may name a commit of the branch.
    let ok = ok
        && revision.is_none_or(|rev| {
            !rev.starts_with('-') && git(&["checkout", "--quiet", "--force", rev], workdir, how, &mut log)
        });
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

/// Runs git with a scrubbed environment, logging what it says; false if it failed or ran out
/// of time.
fn git(args: &[&str], dir: &Path, how: Git, log: &mut String) -> bool {
    log.push_str(&format!("$ git {}\n", args.join(" ")));
    let mut cmd = std::process::Command::new("git");
    // Git runs outside the sandbox: hooks in the checkout (a build could have written them,
    // were `.git` writable to it) must not run here. A server that stalls is given up on.
    cmd.args(["-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false"])
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
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if std::time::Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
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
    match status {
        Some(s) => s.success(),
        None => {
            log.push_str(&format!("[tbox-report] git took longer than {} s and was stopped\n", GIT_TIMEOUT.as_secs()));
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
