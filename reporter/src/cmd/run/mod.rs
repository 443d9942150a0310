//! `tbox-report run`: the cron entry point. Per project: take the lock, flush the spool,
//! obtain the steps (the volunteer's own, or the project's recipe, verified against the pinned
//! key: `trust.rs`), update the source, skip an unchanged revision, make the sandbox, report
//! `started`, run the steps, collect test results, and deliver (or spool) the signed
//! `finished` report. A refused recipe or sandbox runs nothing: exit 5 and an `exception`
//! report, so that the project sees it.

mod checkout;
mod plan;
mod refuse;

use std::fs::{File, TryLockError};
use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use chrono::Utc;
use indicatif::{ProgressBar, ProgressStyle};
use tbox_protocol::{BuildResult, BuildState, FORMAT, Report, Step, StepKind};

use self::checkout::{Git, checkout};
pub use self::plan::Job;
use self::plan::{Plan, Skip, plan};
pub use self::refuse::decline;
use self::refuse::{forget_refusal, refuse};
use crate::cli::RunArgs;
use crate::client::{self, Client, Sent, printable};
use crate::config::{self, Config, Mode, Project};
use crate::runner::{self, Ending, Spec};
use crate::sandbox::Sandbox;
use crate::trust;
use crate::{exit, junit, props, spool};

pub fn run(args: &RunArgs) -> anyhow::Result<u8> {
    if let Some(p) = super::pause::paused().filter(|_| !args.force) {
        // Said only with -v: cron would mail it every quarter of an hour.
        if args.common.verbose {
            eprintln!("tbox-report: {p}; nothing built (--force builds anyway)");
        }
        return Ok(exit::OK);
    }
    let (config, sites) = super::load_sites(&args.common)?;
    if let Some(name) = &args.project {
        config.project(name)?;
    }
    if let Some(why) = config.not_now().filter(|_| !args.force) {
        // Said only with -v, as for a pause.
        if args.common.verbose {
            eprintln!("tbox-report: {why}; nothing built (--force builds anyway)");
        }
        return Ok(exit::OK);
    }
    anyhow::ensure!(!config.projects.is_empty(), "the config has no [[project]] to build");
    if let Some(b) = building() {
        // One line for the run, not one per project: the next run builds what this one would.
        let what = b["project"].as_str().map(client::printable).unwrap_or_else(|| "a project".into());
        eprintln!(
            "tbox-report: {what} is being built on this machine (serve or another run): one build at a time; nothing else starts now"
        );
        return Ok(exit::OK);
    }
    let mut code = exit::OK;
    for (site, client) in &sites {
        let projects: Vec<&Project> =
            site.projects.iter().filter(|p| args.project.as_ref().is_none_or(|n| *n == p.name)).collect();
        if projects.is_empty() {
            continue;
        }
        // Asked once per server: whether it knows this machine, and for which projects.
        let standing = standing(site, client);
        for project in projects {
            // Not allowed to report: the build would be thrown away, so it does not run.
            if let Some(why) = standing.as_ref().and_then(|s| s.refusal(site, &project.name)) {
                // Said when it changes (or with -v): while an admin has not approved the machine
                // yet, cron runs every quarter of an hour and would say the same each time.
                let marker = site.project_state("not-built", &project.name);
                if args.common.verbose || std::fs::read_to_string(&marker).ok().as_deref() != Some(why.as_str()) {
                    eprintln!("tbox-report: {}: not built: {why}", project.name);
                    if let Some(dir) = marker.parent() {
                        let _ = std::fs::create_dir_all(dir);
                    }
                    let _ = std::fs::write(&marker, &why);
                }
                code = exit::worst(code, exit::REJECTED);
                continue;
            }
            let _ = std::fs::remove_file(site.project_state("not-built", &project.name));
            code = exit::worst(code, run_project(site, client, project, args.force, args.common.verbose, None)?);
        }
    }
    Ok(code)
}

/// What the server says this builder may do; None when it cannot say now (then builds run and
/// their reports wait in the spool).
pub(super) struct Standing {
    pub(super) status: String,
    projects: Vec<String>,
    pending: Vec<String>,
    /// Whether this machine's key is one of the builder's unrevoked keys (a name taken by
    /// another machine, or a key made anew, is not).
    key_known: bool,
    /// This machine's key fingerprint, for the message when it is not known.
    fingerprint: String,
}

pub(super) fn standing(config: &Config, client: &Client) -> Option<Standing> {
    let strings = |v: &serde_json::Value| -> Vec<String> {
        v.as_array().map(|a| a.iter().filter_map(|p| p.as_str().map(str::to_owned)).collect()).unwrap_or_default()
    };
    match client.get_as_builder(&format!("/api/v1/builders/{}", config.builder)) {
        Sent::Delivered(v) => {
            let mine = client.fingerprint();
            let key_known = v["keys"].as_array().is_some_and(|keys| {
                keys.iter().any(|k| k["fingerprint"].as_str() == Some(mine.as_str()) && k["revoked"] != true)
            });
            Some(Standing {
                status: v["status"].as_str().unwrap_or_default().to_owned(),
                projects: strings(&v["projects"]),
                pending: strings(&v["pending_projects"]),
                key_known,
                fingerprint: mine,
            })
        }
        Sent::Rejected { status: 404, .. } => Some(Standing {
            status: "unknown".into(),
            projects: Vec::new(),
            pending: Vec::new(),
            key_known: false,
            fingerprint: client.fingerprint(),
        }),
        _ => None,
    }
}

impl Standing {
    pub(super) fn refusal(&self, config: &Config, project: &str) -> Option<String> {
        let (b, server) = (&config.builder, &config.server);
        let approve = format!("an admin of {server} runs `tbox-server builder approve {b}`");
        match self.status.as_str() {
            "unknown" => Some(format!(
                "builder {b} is not registered on {server} (tbox-report register --project {project}, or join)"
            )),
            "pending" => Some(format!("builder {b} is pending approval; {approve}")),
            "revoked" => Some(format!("builder {b} is revoked on {server}")),
            _ if !self.key_known => Some(unknown_key(config, &self.fingerprint, project)),
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

/// Adds the CPU time the build's processes used, when the build ends however it ends.
struct CpuMeter(Duration);

impl Drop for CpuMeter {
    fn drop(&mut self) {
        crate::schedule::cpu::spend(crate::schedule::cpu::children().saturating_sub(self.0));
    }
}

/// Whether a build is running on this machine now (it holds the machine's build lock).
pub fn machine_busy() -> bool {
    building().is_some()
}

/// The build running on this machine now, if any: project, server, since, pid, request.
pub fn building() -> Option<serde_json::Value> {
    super::lock_holder(&config::state_dir().join("building.lock"))
}

/// Whether this machine would build `project` now: its recipe's signature, version, expiry,
/// branches, source, requirements and network checked, as a build would. `serve` asks before
/// taking a lease, so that it never takes a slot only to refuse it.
pub fn would_build(config: &Config, project: &Project) -> Result<(), String> {
    match plan(config, project, false) {
        Ok(_) => Ok(()),
        Err(Skip::Quietly(_, why) | Skip::Refused(why)) => Err(why),
    }
}

/// What to do when the server does not know this machine's key under the config's builder name.
pub fn unknown_key(config: &Config, fingerprint: &str, project: &str) -> String {
    let (b, server) = (&config.builder, &config.server);
    format!(
        "builder {b} on {server} does not have this machine's key ({}): the name is another machine's, or \
         the key was made anew. Register under a name of your own: `tbox-report register --builder NEW-NAME \
         --project {project}` (the config then uses it), or ask an admin of {server} to add this key to {b} \
         (`tbox-server builder add {b} --key {}`)",
        fingerprint,
        config.key_path().with_extension("pub").display(),
    )
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
    let request = job.and_then(|j| j.request);
    let state = config::state_dir();
    // One build at a time on this machine, whichever server or project it is for, and whether
    // cron's `run` or `serve` started it: the volunteer's machine is not a build farm.
    let lock_path = state.join("building.lock");
    std::fs::create_dir_all(&state).with_context(|| format!("cannot create {}", state.display()))?;
    // Not truncated on opening: it says which build holds it (`tbox-report status`).
    let mut lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("cannot create {}", lock_path.display()))?;
    let mut said = false;
    loop {
        match lock.try_lock() {
            Ok(()) => break,
            // A periodic run tries again next time.
            Err(TryLockError::WouldBlock) if lease.is_none() => {
                eprintln!(
                    "tbox-report: another run is building on this machine (one build at a time); {} waits for the \
                     next run",
                    project.name
                );
                return Ok(exit::OK);
            }
            // A leased build waits (serve renews the lease meanwhile).
            Err(TryLockError::WouldBlock) => {
                if !said {
                    eprintln!("tbox-report: {}: waiting for the build in progress on this machine", project.name);
                    said = true;
                }
                if runner::stopping() {
                    return Ok(exit::OK);
                }
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(TryLockError::Error(e)) => {
                return Err(e).context(format!("cannot lock {}", lock_path.display()));
            }
        }
    }

    let building = serde_json::json!({
        "project": project.name,
        "server": config.server,
        "since": Utc::now(),
        "pid": std::process::id(),
        "request": request,
    });
    let _ = lock.set_len(0).and_then(|()| std::io::Write::write_all(&mut lock, building.to_string().as_bytes()));
    // What this build's processes use counts against `schedule.cpu_per_day`.
    let _cpu = CpuMeter(crate::schedule::cpu::children());

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
    // The server did not take the spool just now: this build's reports are tried once too and
    // join the spool, rather than spending the retries' 42 s on every run while it is down.
    let quick;
    let client = if flushed.last_error.is_some() {
        quick = client.once();
        &quick
    } else {
        client
    };

    let workdir = config::expand(&project.workdir);
    // What a report that built nothing names: the revision a leased request asked for (so that
    // it answers that request), else the one built last, so that the waterfall does not show a
    // revision "unknown".
    let not_built = || match job.and_then(|j| j.revision.as_ref()) {
        Some(asked) => asked.to_string(),
        None => last_revision(config, &project.name).unwrap_or_else(|| "unknown".into()),
    };
    let plan = match plan(config, project, verbose) {
        Ok(plan) => plan,
        Err(Skip::Quietly(code, why)) => {
            eprintln!("tbox-report: {why}");
            return Ok(exit::worst(floor, code));
        }
        Err(Skip::Refused(why)) => {
            return refuse(
                config,
                client,
                project,
                ("recipe refused", &not_built(), lease, request),
                &why,
                floor,
                verbose,
            );
        }
    };
    let started_at = Utc::now();
    let mut steps = Vec::new();
    let how = if plan.recipe.is_some() { Git::Recipe } else { Git::Own };
    // Nothing the server alone says decides what runs: a revision needs a trusted signature,
    // and a signed request must be fresh and for this project, branch and revision.
    let revision_wanted = match job.map(|j| j.requested_revision(&plan, &project.name)) {
        None => None,
        Some(Ok(r)) => r,
        Some(Err(why)) => {
            let why = format!("the build request cannot be obeyed: {why}");
            return refuse(
                config,
                client,
                project,
                ("request refused", &not_built(), lease, request),
                &why,
                floor,
                verbose,
            );
        }
    };
    let checkout = plan
        .source
        .as_ref()
        .map(|url| checkout(url, &project.branch, revision_wanted, &workdir, how, plan.limits.disk));
    if let Some((step, ok)) = &checkout {
        if !ok {
            // The source could not be updated: say why here, and tell the project (the
            // reporter's trouble, purple) once per reason, not on every cron run.
            let log = step.log.as_deref().unwrap_or_default();
            let why = checkout::failure(log, how);
            eprintln!("tbox-report: {}: the checkout failed, nothing was built: {why}", project.name);
            let marker = config.project_state("checkout-failed", &project.name);
            if lease.is_none() && std::fs::read_to_string(&marker).is_ok_and(|old| old == why) {
                if verbose {
                    eprintln!("tbox-report: {}: the project was told of this failure already", project.name);
                }
                return Ok(exit::worst(floor, exit::ERROR));
            }
            let mut s = step.clone();
            s.started_at = started_at.fixed_offset();
            let mut report = finish(project, config, super::new_uuid(), not_built(), started_at, vec![s], Vec::new());
            mark(&mut report, &plan, None, config.sandbox_for(project));
            report.lease = lease;
            let delivered = super::deliver(&report, client, Some(&config.spool_dir()), request, verbose)?;
            if delivered == exit::OK || delivered == exit::SPOOLED {
                if let Some(dir) = marker.parent() {
                    let _ = std::fs::create_dir_all(dir);
                }
                let _ = std::fs::write(&marker, &why);
            }
            return Ok(exit::worst(exit::worst(floor, delivered), exit::ERROR));
        }
        let _ = std::fs::remove_file(config.project_state("checkout-failed", &project.name));
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
    sweep_scratch(&state.join("work"));
    let scratch = state.join("work").join(&uuid);
    std::fs::create_dir_all(&scratch)?;
    // Held while the build runs: a scratch directory whose lock is free is a killed run's.
    let scratch_lock = File::create(scratch.join(".lock"))?;
    scratch_lock.lock()?;
    let _cleanup = RemoveOnDrop(scratch.clone());

    // No sandbox, no build: a recipe's steps come from the project, not from this volunteer.
    let sandbox = match config.sandbox_for(project) {
        Mode::None => None,
        Mode::Auto => match Sandbox::new(&workdir, &scratch.join("sandbox"), plan.network, plan.limits) {
            Ok(s) => Some(s),
            Err(e) => {
                let why = format!("no sandbox could be made for the steps, so none ran: {e}");
                return refuse(
                    config,
                    client,
                    project,
                    ("no sandbox", &revision, lease, request),
                    &why,
                    floor,
                    verbose,
                );
            }
        },
    };
    if let Some(v) = &plan.recipe {
        // From now on an older recipe, or other bytes under this version, are refused here.
        trust::record_run(v)?;
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
        branch: project.branch.to_string(),
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
        artifacts: Vec::new(),
    };
    mark(&mut started, &plan, sandbox.as_ref(), config.sandbox_for(project));
    started.lease = lease;
    if let Sent::Rejected { status, message } = client.submit_once(&serde_json::to_vec(&started)?) {
        eprintln!("tbox-report: the server refused the started report for {} ({status}): {message}", project.name);
        // Who this builder is, or what it may report for: the finished report would be refused
        // alike, so the steps (hours, for some projects) do not run for nothing.
        if matches!(status, 401 | 403 | 404) {
            let what = match status {
                401 => unknown_key(config, &client.fingerprint(), &project.name),
                _ => format!(
                    "builder {} may not report for {} on {}: `tbox-report check` says why",
                    config.builder, project.name, config.server
                ),
            };
            eprintln!("tbox-report: {}: not built: {what}", project.name);
            return Ok(exit::worst(floor, exit::REJECTED));
        }
    }

    let progress = progress_bar();
    let mut tests = Vec::new();
    // Shared by the steps: what one report can carry (the server takes 32 MiB at most).
    let mut junit_budget = junit::Budget::for_a_report();
    let mut log_budget = LOG_BUDGET;
    // Step logs are written where the disk limit looks (the sandbox's scratch directory, which
    // the step does not see) and removed once read: a hundred chatty steps do not fill the disk.
    let log_dir = sandbox.as_ref().map_or_else(|| scratch.clone(), |s| s.scratch().join("logs"));
    std::fs::create_dir_all(&log_dir)?;
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
        let log_path = log_dir.join(format!("step-{i}.log"));
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
            low_priority: config.priority == config::Priority::Low,
        };
        let ending = runner::run(&spec, &log, |elapsed| {
            if let Some(bar) = &progress {
                bar.set_message(format!("{}: {} ({}s)", project.name, printable(&cfg.name), elapsed.as_secs()));
                bar.tick();
            }
        });
        drop(log);
        // Each step keeps at least its last lines, however much the ones before it said.
        let cap = config.max_log_bytes.min(log_budget).max(MIN_LOG);
        let (mut text, truncated) = runner::read_capped(&log_path, cap)?;
        let _ = std::fs::remove_file(&log_path);
        log_budget = log_budget.saturating_sub(text.len() as u64);
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
            Ending::Limit(limit) => {
                text.push_str(&format!("\n[tbox-report] step ended: {limit}\n"));
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
            let mut found = junit::collect(&workdir, &cfg.junit, Some(since), &mut junit_budget);
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
            eprintln!("tbox-report: {}: step {} → {}", project.name, printable(&cfg.name), result);
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

    let mut artifacts = Vec::new();
    if !plan.artifacts.is_empty() && !stop_before_artifacts(&steps) {
        let found = crate::artifacts::collect(&workdir, &plan.artifacts);
        if verbose {
            eprintln!("tbox-report: {}: {} artifact(s) hashed", project.name, found.artifacts.len());
        }
        if !found.problems.is_empty()
            && let Some(last) = steps.last_mut()
        {
            let log = last.log.get_or_insert_with(String::new);
            for p in &found.problems {
                log.push_str(&format!("[tbox-report] {p}\n"));
            }
        }
        artifacts = found.artifacts;
    }
    let mut report = finish(project, config, uuid, revision.clone(), started_at, steps, tests);
    report.artifacts = artifacts;
    mark(&mut report, &plan, sandbox.as_ref(), config.sandbox_for(project));
    report.lease = lease;
    let delivered = super::deliver(&report, client, Some(&config.spool_dir()), request, verbose)?;
    let code = exit::worst(floor, delivered);
    // A cancelled build (SIGTERM: a shutdown, `systemctl stop`) said nothing about the code:
    // the next run builds the revision again, or a machine stopped every night mid-build would
    // leave that revision cancelled for good.
    let cancelled = report.result == Some(tbox_protocol::BuildResult::Cancelled);
    if (delivered == exit::OK || delivered == exit::SPOOLED) && !cancelled {
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

/// The step logs one report carries at most, all steps together; JUnit results have their own
/// share ([`junit::Budget`]), and the server takes a 32 MiB report at most.
const LOG_BUDGET: u64 = 16 << 20;
/// What a step's log keeps at least once the budget is spent: its error lines and end.
const MIN_LOG: u64 = 32 << 10;

/// Removes what runs killed mid-build (power cut, `kill -9`) left in `work`: every scratch
/// directory whose lock nobody holds, however its build left it. Called with the machine's
/// build lock held, so no other build is making one at this moment.
fn sweep_scratch(work: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(work) else { return };
    for entry in entries.flatten() {
        let dir = entry.path();
        let older_than = |path: &std::path::Path, secs: u64| {
            std::fs::metadata(path)
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > Duration::from_secs(secs)))
        };
        let lock = dir.join(".lock");
        let stale = match File::open(&lock) {
            // Free: its build is gone (builds are one at a time, and this one holds the turn).
            Ok(f) => !matches!(f.try_lock(), Err(TryLockError::WouldBlock)),
            // No lock file: from before locks, or its run died before making one.
            Err(_) => older_than(&dir, 24 * 3600),
        };
        if stale && entry.file_type().is_ok_and(|t| t.is_dir()) {
            let _ = crate::sandbox::disk::remove_tree(&dir);
        }
    }
}

/// Removes the build's scratch directory (logs, sandbox home) however the build ends.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        // However the build left it: unreadable directories, any depth.
        let _ = crate::sandbox::disk::remove_tree(&self.0);
    }
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

/// The finished report; the overall result follows the steps.
pub(super) fn finish(
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
        branch: project.branch.to_string(),
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
        artifacts: Vec::new(),
    }
}

/// A build stopped by its volunteer has no artifacts worth comparing (nor time to hash them).
fn stop_before_artifacts(steps: &[Step]) -> bool {
    steps.iter().any(|s| s.result == BuildResult::Cancelled)
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
