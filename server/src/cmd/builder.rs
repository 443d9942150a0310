//! `tbox-server builder add | approve | revoke | list | reject | prune-pending`.

use anyhow::{Context as _, bail};
use tbox_protocol::PublicKey;

use crate::cli::{BuilderAddArgs, BuilderCommand};
use crate::db::models::NewBuilder;
use crate::db::{self, builders, now, projects};

pub fn run(cmd: BuilderCommand) -> anyhow::Result<()> {
    match cmd {
        BuilderCommand::Add(args) => add(&args),
        BuilderCommand::Approve(args) => {
            let mut conn = super::connect(&args.db)?;
            let mut found = Vec::new();
            let mut unknown = Vec::new();
            for name in &args.names {
                match builders::by_name(&mut conn, name)? {
                    Some(b) => found.push(b),
                    None => unknown.push(format!("{name:?}")),
                }
            }
            if !unknown.is_empty() {
                bail!("no builder named {}; none was approved", unknown.join(", "));
            }
            let granted = db::write_transaction(&mut conn, |c| {
                found
                    .iter()
                    .map(|b| {
                        builders::set_status(c, &b.name, builders::ACTIVE)?;
                        builders::grant_requests(c, b.id)
                    })
                    .collect::<Result<Vec<_>, _>>()
            })?;
            for (b, granted) in found.iter().zip(granted) {
                crate::say!("builder {} approved: its reports are accepted from now on", b.name);
                if !granted.is_empty() {
                    crate::say!("it may now also report for: {}", granted.join(", "));
                }
            }
            Ok(())
        }
        BuilderCommand::Revoke(args) => {
            let mut conn = super::connect(&args.db)?;
            let b = builders::by_name(&mut conn, &args.name)?
                .with_context(|| format!("no builder named {:?}", args.name))?;
            match &args.key {
                Some(fp) => {
                    if !builders::revoke_key(&mut conn, b.id, fp)? {
                        bail!("builder {:?} has no unrevoked key {fp}", args.name);
                    }
                    crate::say!("key {fp} of builder {} revoked", args.name);
                }
                None => {
                    builders::set_status(&mut conn, &args.name, builders::REVOKED)?;
                    crate::say!("builder {} revoked: its reports are refused from now on", args.name);
                }
            }
            Ok(())
        }
        BuilderCommand::Reject(args) => {
            let mut conn = super::connect(&args.db)?;
            let gone = db::write_transaction(&mut conn, |c| builders::reject_pending(c, Some(&args.names), None))?;
            for name in &gone {
                crate::say!("pending builder {name} rejected and deleted");
            }
            let missed: Vec<&String> = args.names.iter().filter(|n| !gone.contains(n)).collect();
            if !missed.is_empty() {
                bail!(
                    "not pending (or no such builder): {}; revoke an approved builder with `builder revoke`",
                    missed.iter().map(|n| format!("{n:?}")).collect::<Vec<_>>().join(", ")
                );
            }
            Ok(())
        }
        BuilderCommand::PrunePending(args) => {
            let mut conn = super::connect(&args.db)?;
            let before = now() - args.older_than;
            let gone = db::write_transaction(&mut conn, |c| builders::reject_pending(c, None, Some(before)))?;
            crate::say!(
                "deleted {} pending registration(s) older than {}",
                gone.len(),
                before.format("%Y-%m-%d %H:%M")
            );
            Ok(())
        }
        BuilderCommand::List(args) => {
            let mut conn = super::connect(&args.db)?;
            for l in builders::list(&mut conn, None)? {
                let b = &l.builder;
                let asks = builders::requested_projects(&mut conn, b.id)?;
                // Waiting: a new registration, or an approved builder asking for more projects.
                if args.pending && b.status != builders::PENDING && asks.is_empty() {
                    continue;
                }
                crate::say!(
                    "{}\t{}\towner={}\tprojects={}\tregistered={}\tlast_report={}",
                    b.name,
                    b.status,
                    b.owner.as_deref().unwrap_or("-"),
                    l.projects.join(","),
                    b.created_at.format("%Y-%m-%d %H:%M"),
                    b.last_report_at.map(|t| t.format("%Y-%m-%d %H:%M").to_string()).unwrap_or_else(|| "never".into()),
                );
                for k in &l.keys {
                    let state = if k.revoked_at.is_some() { "revoked" } else { "active" };
                    crate::say!("\tkey {} ({state})", k.fingerprint);
                }
                if !asks.is_empty() {
                    crate::say!(
                        "\tasks to join: {} (grant with: tbox-server builder approve {})",
                        asks.join(","),
                        b.name
                    );
                }
            }
            Ok(())
        }
    }
}

fn add(args: &BuilderAddArgs) -> anyhow::Result<()> {
    tbox_protocol::validate_name("builder name", &args.name, 64)?;
    let pem = std::fs::read_to_string(&args.key).with_context(|| format!("reading {}", args.key.display()))?;
    let key = PublicKey::from_pem(&pem).with_context(|| format!("{}", args.key.display()))?;
    let fingerprint = key.fingerprint();
    let mut conn = super::connect(&args.db)?;
    let added = db::write_transaction(&mut conn, |conn| -> anyhow::Result<bool> {
        let mut project_ids = Vec::new();
        for p in &args.projects {
            let project = projects::by_name(conn, p)?
                .with_context(|| format!("no project named {p:?} (add it with: tbox-server project add {p})"))?;
            project_ids.push(project.id);
        }
        let builder = match builders::by_name(conn, &args.name)? {
            Some(b) => b,
            None => builders::add(
                conn,
                &NewBuilder {
                    name: &args.name,
                    status: builders::ACTIVE,
                    owner: args.owner.as_deref(),
                    description: None,
                    properties: "{}",
                    created_at: now(),
                },
            )?,
        };
        for id in project_ids {
            builders::allow(conn, builder.id, id)?;
        }
        Ok(builders::add_key(conn, builder.id, &fingerprint, &key.to_pem())?)
    })?;
    crate::say!(
        "builder {} may report for {} with key {fingerprint}{}",
        args.name,
        args.projects.join(", "),
        if added { "" } else { " (key already registered)" }
    );
    Ok(())
}
