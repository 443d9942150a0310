//! `tbox-server project add | list | key … | capability …`.

use anyhow::{Context as _, bail};
use tbox_protocol::PublicKey;

use crate::cli::{CapabilityCommand, ProjectAddArgs, ProjectCommand, ProjectKeyCommand};
use crate::db::models::{Capability, NewProject, Project};
use crate::db::{DbConn, now, projects, recipes};

pub fn run(cmd: ProjectCommand) -> anyhow::Result<()> {
    match cmd {
        ProjectCommand::Add(args) => add(&args),
        ProjectCommand::List(db) => {
            let mut conn = super::connect(&db)?;
            for p in projects::list(&mut conn)? {
                crate::say!("{}\t{}\t{}", p.name, p.title, p.repo_url.unwrap_or_default());
            }
            Ok(())
        }
        ProjectCommand::Key(cmd) => key(cmd),
        ProjectCommand::Capability(cmd) => capability(cmd),
    }
}

fn project(conn: &mut DbConn, name: &str) -> anyhow::Result<Project> {
    projects::by_name(conn, name)?.with_context(|| format!("no project named {name:?}"))
}

fn key(cmd: ProjectKeyCommand) -> anyhow::Result<()> {
    match cmd {
        ProjectKeyCommand::Add(args) => {
            let pem = std::fs::read_to_string(&args.key)
                .with_context(|| format!("cannot read public key {}", args.key.display()))?;
            let key =
                PublicKey::from_pem(&pem).with_context(|| format!("{} is not a usable key", args.key.display()))?;
            let mut conn = super::connect(&args.db)?;
            let p = project(&mut conn, &args.project)?;
            let fp = key.fingerprint();
            // Volunteers pinned the keys the project has: a key none of them endorses signs
            // recipes every joined volunteer refuses. Said before, not after.
            let others: Vec<String> = recipes::keys(&mut conn, p.id)?
                .into_iter()
                .filter(|k| k.revoked_at.is_none() && k.fingerprint != fp)
                .map(|k| k.fingerprint)
                .collect();
            let listed = recipes::current_key_list(&mut conn, p.id)?
                .and_then(|l| tbox_protocol::parse_key_list(&l.body).ok())
                .is_some_and(|l| l.keys.iter().any(|(f, _)| *f == fp));
            if !others.is_empty() && !listed && !args.yes {
                bail!(
                    "no key list of project {} endorses {fp}: the volunteers who joined it pinned {}, and they \
                     would refuse every recipe and request {fp} signs. Publish a key list signed by a key they \
                     trust that lists it (tbox-report keys sign, keys publish), or pass --yes to add it anyway \
                     (for volunteers who will join with it); nothing was changed",
                    args.project,
                    others.join(", ")
                );
            }
            let new = crate::db::models::NewProjectKey {
                project_id: p.id,
                fingerprint: &fp,
                public_key: &pem,
                created_at: now(),
            };
            crate::project_keys::add_key(&mut conn, &new).map_err(|e| anyhow::anyhow!("{e}"))?;
            if let Some(list) = recipes::current_key_list(&mut conn, p.id)? {
                // The project's own signed list decides what volunteers trust, not this table.
                crate::say!(
                    "note: project {} has published a key list (version {}); only the keys it lists sign for the \
                     project, here and on volunteers' machines: to add {fp}, publish a new key list that lists it \
                     (tbox-report keys sign, keys publish)",
                    args.project,
                    list.version
                );
            } else {
                crate::say!("key {fp} may now sign recipes and requests of project {}", args.project);
            }
            crate::say!("volunteers join with: tbox-report join <server>/projects/{} --key {fp}", args.project);
            Ok(())
        }
        ProjectKeyCommand::Revoke(args) => {
            let mut conn = super::connect(&args.db)?;
            let p = project(&mut conn, &args.project)?;
            if !recipes::revoke_key(&mut conn, p.id, &args.key, now())? {
                bail!("project {:?} has no unrevoked key {}", args.project, args.key);
            }
            crate::say!(
                "key {} of project {} revoked on this server: its signatures are refused here from now on",
                args.key,
                args.project
            );
            crate::say!(
                "volunteers check keys themselves: publish a key list that revokes it (tbox-report keys sign --revoke \
                 {}, keys publish) so that no mirror can keep it alive",
                args.key
            );
            Ok(())
        }
        ProjectKeyCommand::List(args) => {
            let mut conn = super::connect(&args.db)?;
            let p = project(&mut conn, &args.project)?;
            for k in recipes::keys(&mut conn, p.id)? {
                crate::say!(
                    "{}\t{}\tadded={}",
                    k.fingerprint,
                    if k.revoked_at.is_some() { "revoked" } else { "active" },
                    k.created_at.format("%Y-%m-%d %H:%M"),
                );
            }
            Ok(())
        }
    }
}

fn capability(cmd: CapabilityCommand) -> anyhow::Result<()> {
    match cmd {
        CapabilityCommand::Add(args) => {
            tbox_protocol::validate_name("capability", &args.name, 64)?;
            let description = args.description.trim();
            anyhow::ensure!(
                !description.is_empty() && description.len() <= 1000,
                "--description must say what the capability means (1 to 1000 bytes)"
            );
            let mut conn = super::connect(&args.db)?;
            let p = project(&mut conn, &args.project)?;
            let cap = Capability { project_id: p.id, name: args.name.clone(), description: description.to_owned() };
            crate::db::write_transaction(&mut conn, |c| recipes::set_capability(c, &cap))?;
            crate::say!("capability {} of project {}: {description}", args.name, args.project);
            Ok(())
        }
        CapabilityCommand::Remove(args) => {
            let mut conn = super::connect(&args.db)?;
            let p = project(&mut conn, &args.project)?;
            if !recipes::remove_capability(&mut conn, p.id, &args.name)? {
                bail!("project {:?} has no capability {:?}", args.project, args.name);
            }
            crate::say!("capability {} of project {} removed", args.name, args.project);
            Ok(())
        }
        CapabilityCommand::List(args) => {
            let mut conn = super::connect(&args.db)?;
            let p = project(&mut conn, &args.project)?;
            for c in recipes::capabilities(&mut conn, p.id)? {
                crate::say!("{}\t{}", c.name, c.description);
            }
            Ok(())
        }
    }
}

fn add(args: &ProjectAddArgs) -> anyhow::Result<()> {
    tbox_protocol::validate_name("project name", &args.name, 64)?;
    if let Some(t) = &args.revision_url {
        anyhow::ensure!(t.contains("{rev}"), "--revision-url must contain {{rev}} where the commit id goes");
    }
    if let Some(t) = &args.compare_url {
        anyhow::ensure!(t.contains("{from}") && t.contains("{to}"), "--compare-url must contain {{from}} and {{to}}");
    }
    let mut conn = super::connect(&args.db)?;
    anyhow::ensure!(projects::by_name(&mut conn, &args.name)?.is_none(), "project {:?} already exists", args.name);
    let new = NewProject {
        name: &args.name,
        title: args.title.as_deref().unwrap_or(&args.name),
        repo_url: args.repo_url.as_deref(),
        revision_url: args.revision_url.as_deref(),
        created_at: now(),
        compare_url: args.compare_url.as_deref(),
    };
    projects::add(&mut conn, &new).with_context(|| format!("adding project {:?}", args.name))?;
    crate::say!("project {} added", args.name);
    Ok(())
}
