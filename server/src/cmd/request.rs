//! `tbox-server request add | list | cancel`: build requests from the command line (an admin
//! on the server needs no project key).

use anyhow::{Context as _, bail};

use crate::api::requests::{Ask, record, views};
use crate::cli::{RequestAddArgs, RequestCommand};
use crate::cmd::Usage;
use crate::db::{self, projects, requests};

pub fn run(cmd: RequestCommand) -> anyhow::Result<()> {
    match cmd {
        RequestCommand::Add(args) => add(&args),
        RequestCommand::List(args) => {
            let mut conn = super::connect(&args.db)?;
            let p = projects::by_name(&mut conn, &args.project)?
                .with_context(|| format!("no project named {:?}", args.project))?;
            for r in views(&mut conn, p.id, "", 100).map_err(|e| anyhow::anyhow!("{e}"))? {
                crate::say!(
                    "{}\t{}\t{}{}\t{} of {} done, {} building, {} lost{}\tby {}\t{}",
                    r.id,
                    r.state,
                    r.branch,
                    r.revision.as_deref().map(|v| format!("@{v}")).unwrap_or_default(),
                    r.done,
                    r.slots,
                    r.leased,
                    r.lost,
                    r.verdict
                        .as_deref()
                        .map(|v| format!(", {v} ({} of distinct {}s)", r.quorum.unwrap_or(2), r.distinct))
                        .unwrap_or_default(),
                    r.requested_by,
                    r.reason.unwrap_or_default()
                );
                for a in r.attempts {
                    crate::say!(
                        "\t{} {} {}",
                        a.builder,
                        a.state,
                        a.build.map(|b| format!("build {b}")).unwrap_or_default()
                    );
                }
            }
            Ok(())
        }
        RequestCommand::Cancel(args) => {
            let mut conn = super::connect(&args.db)?;
            if !requests::cancel(&mut conn, args.id, db::now())? {
                bail!("request {} is not open (or does not exist)", args.id);
            }
            crate::say!("request {} cancelled", args.id);
            Ok(())
        }
    }
}

fn add(args: &RequestAddArgs) -> anyhow::Result<()> {
    // Volunteers build a named revision only when a key they trust signed the request: one
    // made here, unsigned, would be refused by every one of them (and a forge would show each
    // refusal on the pull request). Say so now rather than let it fail on their machines.
    if let Some(rev) = &args.revision {
        return Err(Usage(format!(
            "--revision {rev}: volunteers build a named revision only when the project's key signed the request; \
             ask with `tbox-report request --project {} --key PROJECT.pem --revision {rev} ...` (an admin's request \
             builds a branch's head)",
            args.project
        ))
        .into());
    }
    let mut conn = super::connect(&args.db)?;
    let p =
        projects::by_name(&mut conn, &args.project)?.with_context(|| format!("no project named {:?}", args.project))?;
    let now = chrono::Utc::now();
    let ask = Ask {
        branch: tbox_protocol::BranchName::parse(&args.branch)
            .map_err(|e| anyhow::anyhow!("--branch: {}", e.message))?,
        revision: None,
        builders: args.builders,
        requires: args.requires.clone(),
        deadline: args.deadline.map(|d| now + d),
        quorum: args.quorum,
        distinct: args.distinct.into(),
    };
    let (r, _) = record(&mut conn, p.id, &ask, None, "admin", now).map_err(|e| anyhow::anyhow!("{e}"))?;
    crate::say!(
        "request {} for {}: {} builder(s) on {}{}",
        r.id,
        args.project,
        r.builders,
        r.branch,
        r.revision.as_deref().map(|v| format!(" at {v}")).unwrap_or_default()
    );
    Ok(())
}
