//! `tbox-report serve`: one long-running process for all of a volunteer's projects. It asks
//! the server for work (a long poll on `POST /api/v1/leases`), builds what it is given while
//! renewing the lease, and between requests does `run`'s periodic builds.
//!
//! Polite to its host: one build at a time; no new build while the load average is above
//! `max_load`; at most `daily_budget` requested builds per project a day; on SIGTERM (or
//! Ctrl-C) the running step is stopped, the build reported as cancelled, and it exits.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::json;
use tbox_protocol::{BranchName, Revision};

use super::run::{self, Job};
use crate::cli::{RunArgs, ServeArgs};
use crate::client::{Client, message, printable};
use crate::config::{Config, Project};
use crate::{exit, runner};

/// Seconds one long poll may wait for work.
const WAIT: u64 = 60;
/// Seconds each server's poll waits when serve asks several in turn.
const SHORT_WAIT: u64 = 5;

pub fn run(args: &ServeArgs) -> anyhow::Result<u8> {
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, Arc::clone(&runner::STOP)).context("cannot handle SIGTERM")?;
    }
    // Held while serve runs: `tbox-report status` reads it to say that serve is running.
    let _running = announce(args.every);
    let mut built = 0u64;
    let mut next_periodic = Instant::now();
    let mut code = exit::OK;
    // Why each project is not asked for work, as last said (said again only when it changes).
    let mut not_asking = HashMap::new();
    let mut said_paused = None;
    let mut said_not_now = None;
    // Servers not to be asked again before a time (see `rest`).
    let mut resting: HashMap<String, Rest> = HashMap::new();
    eprintln!("tbox-report serve: started (periodic builds every {} s)", args.every);
    while !runner::stopping() && args.max_builds.is_none_or(|m| built < m) {
        // Read again each round, so that a `join` or an edit takes effect without a restart.
        let (config, sites) = super::load_sites(&args.common)?;
        if let Some(p) = super::pause::paused() {
            if said_paused.as_ref() != Some(&p) {
                eprintln!("tbox-report serve: {p}");
                said_paused = Some(p);
            }
            pause(Duration::from_secs(1));
            continue;
        }
        if said_paused.take().is_some() {
            eprintln!("tbox-report serve: resumed");
        }
        if let Some(why) = config.not_now() {
            if said_not_now.as_ref() != Some(&why) {
                eprintln!("tbox-report serve: {why}; waiting");
                said_not_now = Some(why);
            }
            // Looked at again soon: an edit of the schedule takes effect within seconds.
            pause(Duration::from_secs(10));
            continue;
        }
        said_not_now = None;
        if run::machine_busy() {
            // A `run` from cron is building: a lease taken now would wait for it.
            pause(Duration::from_secs(5));
            continue;
        }
        // Each server in turn, sharing the wait: a lease is taken only when it can be built at
        // once, so never from two servers at the same time.
        // One server: a long wait. Several: short ones, so that work on the second server is
        // not kept waiting behind the first one's poll for long.
        let wait = if sites.len() > 1 { SHORT_WAIT } else { WAIT };
        let mut leased = false;
        for (site, client) in &sites {
            if runner::stopping() || super::pause::paused().is_some() {
                break;
            }
            if resting.get(&site.server).is_some_and(|r| r.until > Instant::now()) {
                continue;
            }
            let asked_at = Instant::now();
            let asked_one = take_lease(site, client, &mut not_asking, wait, args.common.verbose);
            match asked_one.map(|a| match a {
                Asked::Leased(l) => Ok(*l),
                other => Err(other),
            }) {
                Ok(Err(Asked::NoWork)) => {
                    // A server answering "no work" at once instead of holding the poll is not
                    // asked again before the wait is over: no spinning on it.
                    rest(&mut resting, &site.server, asked_at + Duration::from_secs(wait), None);
                }
                Ok(Err(_)) => {
                    // Nothing there this machine would build now: looked at again in a while (a
                    // join, a recipe published or a budget renewed shows then).
                    rest(&mut resting, &site.server, asked_at + Duration::from_secs(15), None);
                }
                Ok(Ok(Leased::Work(project, job))) => {
                    resting.remove(&site.server);
                    // The wait may have outlasted the schedule (or the load may have risen), or
                    // the volunteer may have left the project meanwhile: the slot goes back at
                    // once rather than being built out of hours or for a project left.
                    let left = super::load_sites(&args.common)
                        .map(|(_, now)| {
                            !now.iter().any(|(s, _)| s.server == site.server && s.project(&project.name).is_ok())
                        })
                        .unwrap_or(false);
                    let outcome = match site.not_now().or_else(|| left.then(|| "it left the project".to_owned())) {
                        Some(why) => {
                            let why = format!("this machine does not build now: {why}");
                            eprintln!("tbox-report serve: lease {} declined: {why}", job.lease);
                            run::decline(site, client, &project, (job.lease, job.request), &job.branch, &why, false)?
                        }
                        None => {
                            // Said always: serve runs as a service, and its log is where the
                            // volunteer looks.
                            eprintln!(
                                "tbox-report serve: building {} ({}) for {}, request {}",
                                project.name,
                                job.branch,
                                site.server,
                                job.request.map_or_else(|| "?".to_owned(), |r| r.to_string())
                            );
                            build_leased(site, client, &project, &job, true)?
                        }
                    };
                    code = exit::worst(code, outcome);
                    built += 1;
                    leased = true;
                    break;
                }
                Ok(Ok(Leased::Unusable { project, lease, request, why })) => {
                    // Nothing of it reaches git: the project hears why on its request. It counts
                    // against the project's budget, and the server rests a while longer each
                    // time: one that keeps handing out leases to refuse gets little of this
                    // machine's time, and the other servers are asked meanwhile.
                    eprintln!("tbox-report serve: lease {lease} refused: {why}");
                    spend(site, &project.name);
                    let outcome = run::decline(
                        site,
                        client,
                        &project,
                        (lease, request),
                        &project.branch,
                        &why,
                        args.common.verbose,
                    )?;
                    code = exit::worst(code, outcome);
                    built += 1;
                    let backoff = resting.get(&site.server).map_or(REST_FIRST, |r| (r.backoff * 2).min(REST_MOST));
                    rest(&mut resting, &site.server, Instant::now() + backoff, Some(backoff));
                }
                Err(e) => {
                    eprintln!("tbox-report serve: asking {} for work: {e}", site.server);
                    rest(&mut resting, &site.server, asked_at + Duration::from_secs(30), None);
                }
            }
        }
        if leased {
            // Straight back to asking: requests come before periodic builds.
            continue;
        }
        // Until the first server may be asked again (each one waits its turn).
        let next = sites
            .iter()
            .map(|(s, _)| resting.get(&s.server).map_or_else(Instant::now, |r| r.until))
            .min()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(WAIT));
        let idle = next.saturating_duration_since(Instant::now()).min(Duration::from_secs(WAIT));
        if !idle.is_zero() {
            pause(idle.max(Duration::from_secs(1)));
        }
        if Instant::now() >= next_periodic && !runner::stopping() {
            let periodic = RunArgs { project: None, force: false, common: args.common.clone() };
            match run::run(&periodic) {
                Ok(c) => code = exit::worst(code, c),
                Err(e) => eprintln!("tbox-report serve: periodic build: {e:#}"),
            }
            next_periodic = Instant::now() + Duration::from_secs(args.every);
        }
    }
    eprintln!("tbox-report serve: stopped");
    // A build was reported as cancelled, not dropped: stopping is not an error.
    Ok(if code == exit::ERROR { code } else { exit::OK })
}

/// Holds `serve.lock` in the state directory with this process's pid, start and period.
fn announce(every: u64) -> Option<std::fs::File> {
    let path = crate::config::state_dir().join("serve.lock");
    std::fs::create_dir_all(crate::config::state_dir()).ok()?;
    let mut f = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(path).ok()?;
    // Another serve holds it: this one still serves (builds are one at a time anyway).
    f.try_lock().ok()?;
    let me = json!({ "pid": std::process::id(), "since": chrono::Utc::now(), "every": every });
    f.set_len(0).ok()?;
    std::io::Write::write_all(&mut f, me.to_string().as_bytes()).ok()?;
    Some(f)
}

/// The `serve` running for this user, if one is: pid, since, every (seconds between periodic
/// builds).
pub fn running() -> Option<serde_json::Value> {
    super::lock_holder(&crate::config::state_dir().join("serve.lock"))
}

/// How long a server that handed out a lease this machine refused is left alone, at first and
/// at most (doubling each time in between).
const REST_FIRST: Duration = Duration::from_secs(30);
const REST_MOST: Duration = Duration::from_secs(15 * 60);

/// A server not to be asked before `until`; `backoff`: the last rest after a refused lease.
struct Rest {
    until: Instant,
    backoff: Duration,
}

/// Leaves `server` alone until `until`; a refused lease's backoff is kept for the next one.
fn rest(resting: &mut HashMap<String, Rest>, server: &str, until: Instant, backoff: Option<Duration>) {
    let kept = resting.get(server).map_or(Duration::ZERO, |r| r.backoff);
    resting.insert(server.to_owned(), Rest { until, backoff: backoff.unwrap_or(kept) });
}

/// Sleeps, but wakes at once to stop.
fn pause(d: Duration) {
    let until = Instant::now() + d;
    while Instant::now() < until && !runner::stopping() {
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Today's count of requested builds per project, kept under the state directory.
fn budget_file(config: &Config, project: &str) -> std::path::PathBuf {
    config.project_state("budget", project)
}

fn spent_today(config: &Config, project: &str) -> u32 {
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    std::fs::read_to_string(budget_file(config, project))
        .ok()
        .and_then(|t| t.split_once(' ').filter(|(day, _)| *day == today).and_then(|(_, n)| n.trim().parse().ok()))
        .unwrap_or(0)
}

fn spend(config: &Config, project: &str) {
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    let n = spent_today(config, project) + 1;
    let path = budget_file(config, project);
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let _ = std::fs::write(path, format!("{today} {n}\n"));
}

/// What asking one server for work came to.
enum Asked {
    /// Not asked: no project there this machine would build now.
    Nothing,
    /// Asked; no work (or stopped or paused while waiting).
    NoWork,
    Leased(Box<Leased>),
}

/// What the server leased.
enum Leased {
    /// Work to do: the branch and revision are checked names.
    Work(Project, Job),
    /// A lease whose branch or revision is not a name git may be given (an option, a path…).
    Unusable { project: Project, lease: u64, request: Option<u64>, why: String },
}

/// A signed lease or renew body: the builder's clock and a fresh nonce, so that a copied body
/// cannot be replayed to take leases in this builder's name.
pub fn stamped(mut body: serde_json::Value) -> Vec<u8> {
    let mut nonce = [0u8; 16];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut nonce);
    body["at"] = json!(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
    body["nonce"] = json!(tbox_protocol::hex(&nonce));
    serde_json::to_vec(&body).unwrap_or_default()
}

/// Asks for work for every project with a source this machine can build, budget left, and a
/// recipe it would build now (checked first: a lease taken only to be refused would hold a
/// slot another builder could fill).
fn take_lease(
    config: &Config,
    client: &Client,
    not_asking: &mut HashMap<String, String>,
    wait: u64,
    verbose: bool,
) -> Result<Asked, String> {
    let projects: Vec<&Project> = config
        .projects
        .iter()
        // A request names a branch: only a project whose source tbox-report fetches can build it.
        .filter(|p| p.recipe.is_some() || p.git.is_some())
        .filter(|p| p.daily_budget.is_none_or(|b| spent_today(config, &p.name) < b))
        .filter(|p| match run::would_build(config, p) {
            Ok(()) => {
                not_asking.remove(&p.name);
                true
            }
            Err(why) => {
                if not_asking.get(&p.name) != Some(&why) {
                    eprintln!("tbox-report serve: not taking work for {}: {why}", p.name);
                    not_asking.insert(p.name.clone(), why);
                }
                false
            }
        })
        .collect();
    if projects.is_empty() {
        return Ok(Asked::Nothing);
    }
    let names: Vec<&str> = projects.iter().map(|p| p.name.as_str()).collect();
    let body = stamped(json!({ "projects": names, "capabilities": config.capabilities, "wait": wait }));
    let Some((status, v)) = long_poll(client, body)? else {
        return Ok(Asked::NoWork);
    };
    match status {
        200 => {
            let (Some(lease), Some(project), Some(branch)) =
                (v["lease"].as_u64(), v["project"].as_str(), v["branch"].as_str())
            else {
                return Err(printable(&format!("the server's lease is not what tbox-report expects: {v}")));
            };
            let Some(p) = projects.iter().find(|p| p.name == project) else {
                return Err(printable(&format!(
                    "the server leased a build of {project:?}, which this machine did not ask for"
                )));
            };
            let request = v["request"].as_u64();
            // Checked names or nothing: these go to git.
            let branch = match BranchName::parse(branch) {
                Ok(b) => b,
                Err(e) => {
                    let why = printable(&format!("the lease names branch {branch:?}, which {}", e.message));
                    return Ok(Asked::Leased(Box::new(Leased::Unusable {
                        project: (*p).clone(),
                        lease,
                        request,
                        why,
                    })));
                }
            };
            let revision = match v["revision"].as_str().map(Revision::parse).transpose() {
                Ok(r) => r,
                Err(e) => {
                    let why = printable(&format!("the lease names revision {}, which {}", v["revision"], e.message));
                    return Ok(Asked::Leased(Box::new(Leased::Unusable {
                        project: (*p).clone(),
                        lease,
                        request,
                        why,
                    })));
                }
            };
            let signed = v["signed_request"].as_str().zip(v["request_signature"].as_str());
            if verbose {
                eprintln!("tbox-report serve: lease {lease}: {project} on {branch}");
            }
            let job =
                Job { branch, revision, lease, request, signed: signed.map(|(b, s)| (b.to_owned(), s.to_owned())) };
            Ok(Asked::Leased(Box::new(Leased::Work((*p).clone(), job))))
        }
        204 => Ok(Asked::NoWork),
        s => Err(format!("the server answered {s}: {}", message(&v))),
    }
}

/// Sends the long poll from a thread of its own, so that SIGTERM, Ctrl-C or a pause stops an
/// idle `serve` at once rather than after the server's wait. `None`: asked to stop or paused
/// meanwhile (a lease granted in that instant is never built; it expires and goes to another
/// builder).
fn long_poll(client: &Client, body: Vec<u8>) -> Result<Option<(u16, serde_json::Value)>, String> {
    let (tx, rx) = std::sync::mpsc::channel();
    let client = client.clone();
    std::thread::spawn(move || {
        let _ = tx.send(client.send_signed("POST", "/api/v1/leases", &body));
    });
    let mut tick = 0u64;
    loop {
        tick += 1;
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(answer) => return answer.map(Some),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) if runner::stopping() => return Ok(None),
            // A file read, once a second.
            Err(std::sync::mpsc::RecvTimeoutError::Timeout)
                if tick.is_multiple_of(10) && super::pause::paused().is_some() =>
            {
                return Ok(None);
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return Err("the long poll ended".into()),
        }
    }
}

/// Builds a leased request, renewing the lease meanwhile.
fn build_leased(config: &Config, client: &Client, project: &Project, job: &Job, verbose: bool) -> anyhow::Result<u8> {
    spend(config, &project.name);
    let done = Arc::new(AtomicBool::new(false));
    let renewer = {
        let (done, client) = (Arc::clone(&done), client.clone());
        let path = format!("/api/v1/leases/{}", job.lease);
        std::thread::spawn(move || {
            // Well within any sensible lease time, and cheap.
            let every = Duration::from_secs(60);
            let mut last = Instant::now();
            while !done.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(200));
                if last.elapsed() < every {
                    continue;
                }
                last = Instant::now();
                match client.send_signed("PUT", &path, &stamped(json!({}))) {
                    Ok((200, _)) => {}
                    Ok((410, v)) => {
                        eprintln!("tbox-report serve: {} (building on: the report is still recorded)", message(&v));
                        return;
                    }
                    Ok((s, v)) => eprintln!("tbox-report serve: renewing the lease: {s} {}", message(&v)),
                    Err(e) => eprintln!("tbox-report serve: renewing the lease: {e}"),
                }
            }
        })
    };
    let outcome = if project.recipe.is_none() && job.branch != project.branch {
        // The volunteer's own steps are for the branch it configured.
        let why = format!("this machine builds only branch {} of {} with its own steps", project.branch, project.name);
        run::decline(config, client, project, (job.lease, job.request), &job.branch, &why, verbose)
    } else {
        run::run_job(config, client, project, job, verbose)
    };
    done.store(true, Ordering::SeqCst);
    let _ = renewer.join();
    outcome
}
