//! A build that does not run: the volunteer says why, and the project hears of it through an
//! `exception` report (once per reason, so that cron repeating a refusal does not fill the
//! waterfall).

use chrono::Utc;
use tbox_protocol::{BranchName, BuildResult, Step};

use super::{finish, last_revision};
use crate::client::Client;
use crate::config::{Config, Project};
use crate::exit;

/// Answers a lease without building: the project sees why on its request.
pub fn decline(
    config: &Config,
    client: &Client,
    project: &Project,
    (lease, request): (u64, Option<u64>),
    branch: &BranchName,
    why: &str,
    verbose: bool,
) -> anyhow::Result<u8> {
    let last = last_revision(config, &project.name).unwrap_or_else(|| "unknown".into());
    let requested = Project { branch: branch.clone(), ..project.clone() };
    refuse(config, client, &requested, ("declined", &last, Some(lease), request), why, exit::OK, verbose)
}

/// Nothing runs. Says why, and tells the project with an `exception` report (once per reason,
/// so that a refusal repeated by cron does not fill the waterfall).
pub(super) fn refuse(
    config: &Config,
    client: &Client,
    project: &Project,
    (step_name, revision, lease, request): (&str, &str, Option<u64>, Option<u64>),
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
    let mut report = finish(project, config, crate::cmd::new_uuid(), revision.to_owned(), now, vec![step], Vec::new());
    // A leased build refused still answers its lease: the project sees why on the request.
    report.lease = lease;
    // A refusal answering a lease goes now or never: kept, a server handing out leases to
    // refuse could fill the spool with them, and the lease is gone by the time it could go.
    let spool = lease.is_none().then(|| config.spool_dir());
    let delivered = crate::cmd::deliver(&report, client, spool.as_deref(), request, verbose)?;
    if delivered == exit::OK || delivered == exit::SPOOLED {
        if let Some(dir) = marker.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let _ = std::fs::write(&marker, why);
    }
    Ok(exit::worst(exit::worst(floor, delivered), exit::REFUSED))
}

/// A build ran: a later refusal is news again.
pub(super) fn forget_refusal(config: &Config, project: &str) {
    let _ = std::fs::remove_file(config.project_state("refused", project));
}
