//! One file per subcommand.

mod check;
mod flush;
mod join;
mod keygen;
mod keys;
mod log;
pub mod pause;
mod push;
mod recipe;
mod register;
mod request;
mod run;
pub mod serve;
mod status;

use std::path::Path;

use anyhow::Context as _;

use tbox_protocol::Report;

use crate::cli::{Cli, Command, Common};
use crate::client::{Client, Sent};
use crate::config::{self, Config};
use crate::{exit, keyfile, spool};

pub fn run(cli: Cli) -> anyhow::Result<u8> {
    match cli.command {
        Command::Keygen(a) => keygen::run(&a),
        Command::Register(a) => register::run(&a),
        Command::Run(a) => run::run(&a),
        Command::Push(a) => push::run(&a),
        Command::Flush(a) => flush::run(&a.common),
        Command::Check(a) => check::run(&a.common),
        Command::Join(a) => join::join(&a),
        Command::Leave(a) => join::leave(&a),
        Command::Recipe(c) => recipe::run(c),
        Command::Keys(c) => keys::run(c),
        Command::Request(a) => request::run(&a),
        Command::Serve(a) => serve::run(&a),
        Command::Pause(a) => pause::pause(&a),
        Command::Resume(a) => pause::resume(&a),
        Command::Status(a) => status::run(&a),
        Command::Log(a) => log::run(&a),
        Command::Completions(a) => {
            let mut cli = <crate::cli::Cli as clap::CommandFactory>::command();
            clap_complete::generate(a.shell, &mut cli, "tbox-report", &mut std::io::stdout());
            Ok(crate::exit::OK)
        }
        Command::Manpage(a) => {
            let cli = <crate::cli::Cli as clap::CommandFactory>::command();
            match &a.dir {
                Some(dir) => clap_mangen::generate_to(cli, dir)?,
                None => clap_mangen::Man::new(cli).render(&mut std::io::stdout())?,
            }
            Ok(crate::exit::OK)
        }
    }
}

/// The config and a client signing with its key.
fn load(common: &Common) -> anyhow::Result<(Config, Client)> {
    let config = Config::load(&config::config_path(common.config.as_deref()))?;
    config.adopt_legacy_spool();
    let key = keyfile::load(&config.key_path())?;
    let client = Client::new(&config.server, &config.builder, key);
    Ok((config, client))
}

/// The config and, for each server it names, that server's view of it and a client for it
/// (see [`Config::sites`]); the top-level server first.
fn load_sites(common: &Common) -> anyhow::Result<(Config, Vec<(Config, Client)>)> {
    let config = Config::load(&config::config_path(common.config.as_deref()))?;
    config.adopt_legacy_spool();
    let sites = config
        .sites()
        .into_iter()
        .map(|site| {
            let key = keyfile::load(&site.key_path())?;
            let client = Client::new(&site.server, &site.builder, key);
            Ok((site, client))
        })
        .collect::<anyhow::Result<_>>()?;
    Ok((config, sites))
}

/// The view of the server that builds `project`, and a client for it.
fn load_for(common: &Common, project: &str) -> anyhow::Result<(Config, Client)> {
    let (config, sites) = load_sites(common)?;
    config.project(project)?;
    sites
        .into_iter()
        .find(|(s, _)| s.projects.iter().any(|p| p.name == project))
        .with_context(|| format!("no server in the config builds {project}"))
}

/// Serialises, signs, sends (with retries) and, if that fails for now, spools a report.
/// Returns the exit code it deserves: `exit::ERROR` when it could be neither sent nor spooled.
/// A finished report is also added to this machine's own record of what it built
/// (`tbox-report log`), with the request it answered, if any.
/// `spool_dir` None: a report not worth keeping when it cannot be sent now (a lease's
/// decline: the lease has expired by the time it could go).
pub(crate) fn deliver(
    report: &Report,
    client: &Client,
    spool_dir: Option<&Path>,
    request: Option<u64>,
    verbose: bool,
) -> anyhow::Result<u8> {
    let mut entry = (report.state == tbox_protocol::BuildState::Finished)
        .then(|| crate::history::Entry::of(report, client.base(), request));
    let code = send_or_spool(report, client, spool_dir, verbose, entry.as_mut())?;
    if let Some(e) = &entry {
        crate::history::record(e);
    }
    Ok(code)
}

fn send_or_spool(
    report: &Report,
    client: &Client,
    spool_dir: Option<&Path>,
    verbose: bool,
    mut entry: Option<&mut crate::history::Entry>,
) -> anyhow::Result<u8> {
    let mut fate = |report: &str, url: Option<&str>| {
        if let Some(e) = entry.as_deref_mut() {
            e.report = report.to_owned();
            e.url = url.map(crate::client::printable);
        }
    };
    let mut report = report.clone();
    let notes = crate::budget::fit(&mut report, crate::budget::DEFAULT_BYTES);
    if let (false, Some(step)) = (notes.is_empty(), report.steps.last_mut()) {
        let log = step.log.get_or_insert_with(String::new);
        for n in &notes {
            log.push_str(&format!("\n[tbox-report] {n}\n"));
        }
    }
    let report = &report;
    let body = serde_json::to_vec(report)?;
    // Signed once, here: a spooled report is later sent with this very signature.
    let signature = client.sign(&body);
    let why = match client.submit(&body, &signature) {
        Sent::Delivered(v) => {
            fate("sent", v["url"].as_str());
            if verbose {
                eprintln!(
                    "tbox-report: {} {}: reported as {}",
                    report.project,
                    report.revision,
                    crate::client::printable(v["url"].as_str().unwrap_or("?"))
                );
            }
            return Ok(exit::OK);
        }
        Sent::Rejected { status, message } => {
            fate("refused", None);
            eprintln!("tbox-report: the server refused the report for {} ({status}): {message}", report.project);
            return Ok(exit::REJECTED);
        }
        Sent::Unreachable(e) => format!("the server at {} could not be reached ({e})", client.base()),
        Sent::NotTbox(e) => e,
    };
    let Some(spool_dir) = spool_dir else {
        fate("not sent", None);
        eprintln!("tbox-report: {why}: the report for {} was not kept (it answered a lease)", report.project);
        return Ok(exit::SPOOLED);
    };
    match spool::save(spool_dir, &body, &signature) {
        Ok(path) => {
            fate("spooled", None);
            eprintln!(
                "tbox-report: {why}: report kept in the spool; it waits in {} and goes with the next run or \
                 `tbox-report flush`",
                path.display()
            );
            Ok(exit::SPOOLED)
        }
        Err(e) => {
            fate("lost", None);
            let cause = e.root_cause().to_string();
            eprintln!(
                "tbox-report: {why} AND the report could not be spooled in {} ({cause}): the report of build {} \
                 (project {}, revision {}) is lost",
                spool_dir.display(),
                report.uuid,
                report.project,
                report.revision
            );
            Ok(exit::ERROR)
        }
    }
}

/// What the process holding the lock file `path` wrote into it (`building.lock`,
/// `serve.lock`), if a process holds it now; Null where it wrote nothing readable yet.
pub(crate) fn lock_holder(path: &Path) -> Option<serde_json::Value> {
    let f = std::fs::File::open(path).ok()?;
    if !matches!(f.try_lock(), Err(std::fs::TryLockError::WouldBlock)) {
        return None;
    }
    Some(serde_json::from_str(&std::io::read_to_string(f).unwrap_or_default()).unwrap_or_default())
}

/// A fresh build id: 128 random bits, as hex.
pub(crate) fn new_uuid() -> String {
    let mut bytes = [0u8; 16];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut bytes);
    tbox_protocol::hex(&bytes)
}

/// The revision checked out in `dir`, if it is a git work tree. Runs outside the sandbox on a
/// tree builds wrote into: nothing in it may make git run a program.
fn git_revision(dir: &Path) -> Option<String> {
    let out = std::process::Command::new("git")
        .args(["-c", "core.fsmonitor=false", "-c", "core.hooksPath=/dev/null", "-c", "submodule.recurse=false"])
        .args(["rev-parse", "HEAD"])
        .current_dir(dir)
        .output()
        .ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned()).filter(|r| !r.is_empty())
}
