//! `tbox-report push`: report a build that ran elsewhere (a CI job, a manual build): one step
//! per log file, JUnit files by glob. The server records it like any other build.

use anyhow::{Context as _, bail};
use chrono::Utc;
use tbox_protocol::{BuildResult, BuildState, FORMAT, Report, Step};

use crate::cli::PushArgs;
use crate::{junit, props, runner};

pub fn run(args: &PushArgs) -> anyhow::Result<u8> {
    // A project of the config goes to its own server; any other to the top-level one.
    let (config, client) = match super::load_for(&args.common, &args.project) {
        Ok(site) => site,
        Err(_) => super::load(&args.common)?,
    };
    let Some(result) = BuildResult::parse(&args.result) else {
        let all: Vec<&str> = BuildResult::ALL.iter().map(|r| r.as_str()).collect();
        bail!("--result must be one of {}, got {:?}", all.join(", "), args.result);
    };
    if args.steps.len() > args.logs.len() {
        bail!("{} --step names for {} --log files", args.steps.len(), args.logs.len());
    }
    let project_cfg = config.projects.iter().find(|p| p.name == args.project);
    let cwd = std::env::current_dir()?;
    let revision = match &args.revision {
        Some(r) => r.clone(),
        None => super::git_revision(&cwd).context("--revision is needed outside a git checkout")?,
    };
    let branch =
        args.branch.clone().or_else(|| project_cfg.map(|p| p.branch.to_string())).unwrap_or_else(|| "main".into());
    let now = Utc::now().fixed_offset();
    let mut steps = Vec::new();
    for (i, path) in args.logs.iter().enumerate() {
        let (log, truncated) = runner::read_capped(path, config.max_log_bytes)
            .with_context(|| format!("cannot read log {}", path.display()))?;
        let name = args.steps.get(i).cloned().unwrap_or_else(|| {
            path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| format!("step {}", i + 1))
        });
        let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok().map(chrono::DateTime::<Utc>::from);
        steps.push(Step {
            name,
            result,
            started_at: modified.map(|m| m.fixed_offset()).filter(|m| *m <= now).unwrap_or(now),
            finished_at: now,
            exit_code: None,
            kind: None,
            log: Some(log),
            log_truncated: truncated,
        });
    }
    let found = if args.junit.is_empty() {
        junit::Collected::default()
    } else {
        junit::collect(&cwd, &args.junit, None, &mut junit::Budget::for_a_report())
    };
    // File names and parser messages come from the files: no escape sequence reaches the terminal.
    for n in found.notes.iter().chain(&found.problems) {
        eprintln!("tbox-report: {}", crate::client::printable(n));
    }
    if !args.junit.is_empty() && found.matched == 0 {
        eprintln!("tbox-report: no JUnit file matched {}", args.junit.join(", "));
    }
    if !found.problems.is_empty() {
        // As `run` does: results that cannot be read are not reported as if there were none.
        anyhow::bail!("the JUnit files above could not be read; nothing was sent");
    }
    let tests = found.results;
    let started_at = steps.iter().map(|s| s.started_at).min().unwrap_or(now);
    let report = Report {
        format: FORMAT.into(),
        uuid: super::new_uuid(),
        project: args.project.clone(),
        builder: config.builder.clone(),
        state: BuildState::Finished,
        result: Some(result),
        branch,
        revision,
        started_at,
        finished_at: Some(now),
        steps,
        tests,
        properties: props::detect(&project_cfg.map(|p| p.properties.clone()).unwrap_or_default()),
        reporter: crate::REPORTER.into(),
        recipe_version: None,
        recipe_key: None,
        sandbox: None,
        lease: None,
        artifacts: Vec::new(),
    };
    super::deliver(&report, &client, Some(&config.spool_dir()), None, true)
}
