//! `tbox-server project add | list`.

use anyhow::Context as _;

use crate::cli::{ProjectAddArgs, ProjectCommand};
use crate::db::models::NewProject;
use crate::db::{now, projects};

pub fn run(cmd: ProjectCommand) -> anyhow::Result<()> {
    match cmd {
        ProjectCommand::Add(args) => add(&args),
        ProjectCommand::List(db) => {
            let mut conn = super::connect(&db)?;
            for p in projects::list(&mut conn)? {
                println!("{}\t{}\t{}", p.name, p.title, p.repo_url.unwrap_or_default());
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
    println!("project {} added", args.name);
    Ok(())
}
