//! `tbox-server forge add | list | remove`: which forges get a project's commit statuses.
//!
//! A forge is a subscription of kind `forge` (DESIGN "Where projects already look"): its
//! statuses go through the notification queue, and `notify log` shows how sending went.

use anyhow::{Context as _, bail};

use crate::cli::{ForgeAddArgs, ForgeCommand, ForgeKind};
use crate::cmd::Usage;
use crate::db::models::NewSubscription;
use crate::db::notify::FORGE;
use crate::db::{self, notify, projects};

pub fn run(cmd: ForgeCommand) -> anyhow::Result<()> {
    match cmd {
        ForgeCommand::Add(args) => add(&args),
        ForgeCommand::List(args) => {
            let mut conn = super::connect(&args.db)?;
            let project = match &args.project {
                Some(name) => {
                    Some(projects::by_name(&mut conn, name)?.with_context(|| format!("no project named {name:?}"))?.id)
                }
                None => None,
            };
            let forges: Vec<_> =
                notify::list(&mut conn, project)?.into_iter().filter(|l| l.subscription.kind == FORGE).collect();
            if forges.is_empty() {
                crate::say!("no forges (add one with `tbox-server forge add`)");
            }
            for l in forges {
                let s = &l.subscription;
                crate::say!(
                    "{}\t{}\t{} {} {}\tcontext {}\t{}",
                    s.id,
                    l.project,
                    s.forge.as_deref().unwrap_or("?"),
                    s.target,
                    s.repo.as_deref().unwrap_or("?"),
                    s.context.as_deref().unwrap_or("tbox"),
                    match s.failing_since {
                        Some(t) =>
                            format!("last attempt failed (since {} UTC; see `notify log`)", t.format("%Y-%m-%d %H:%M")),
                        None => "ok".to_owned(),
                    }
                );
            }
            Ok(())
        }
        ForgeCommand::Remove(args) => {
            let mut conn = super::connect(&args.db)?;
            let is_forge = notify::list(&mut conn, None)?
                .iter()
                .any(|l| l.subscription.id == args.id && l.subscription.kind == FORGE);
            if !is_forge || !notify::unsubscribe(&mut conn, args.id)? {
                bail!("no forge {} (see `tbox-server forge list`)", args.id);
            }
            crate::say!("forge {} removed", args.id);
            Ok(())
        }
    }
}

/// The longest token read: forge tokens are well under 300 bytes.
const TOKEN_BYTES: u64 = 4096;

fn add(args: &ForgeAddArgs) -> anyhow::Result<()> {
    let repo = args.repo.trim_matches('/');
    check_repo(args.kind, repo).map_err(|e| Usage(format!("--repo {:?}: {e}", args.repo)))?;
    let context = args.context.as_str();
    if context.is_empty() || context.len() > 100 || context.chars().any(|c| c.is_control()) {
        return Err(Usage("--context: 1 to 100 characters, none of them control characters".to_owned()).into());
    }
    let token = read_token(&args.token_file)?;
    let target = crate::notify::target::check_url(&args.api);
    if !args.allow_private_target {
        match &target {
            Ok(None) => {}
            Ok(Some(note)) => crate::say!("note: {note}"),
            Err(why) => {
                return Err(Usage(format!(
                    "--api {}: {why}; statuses go to public addresses only (a forge inside your own network: add \
                     --allow-private-target)",
                    args.api
                ))
                .into());
            }
        }
    }
    // The token travels in a header: over plain http only to a forge on this machine or the
    // operator's own network (a private address, allowed explicitly), never across the internet.
    if args.api.starts_with("http://") && !(args.allow_private_target && target.is_err()) {
        return Err(Usage(format!(
            "--api {}: the token would cross the network unencrypted; use https:// (plain http:// only for a \
             forge at a private address, with --allow-private-target)",
            args.api
        ))
        .into());
    }
    let mut conn = super::connect(&args.db)?;
    let p =
        projects::by_name(&mut conn, &args.project)?.with_context(|| format!("no project named {:?}", args.project))?;
    if let Some(same) = notify::list(&mut conn, Some(p.id))?.into_iter().find(|l| {
        let s = &l.subscription;
        s.kind == FORGE
            && s.target == args.api
            && s.repo.as_deref() == Some(repo)
            && s.context.as_deref() == Some(context)
    }) {
        bail!(
            "{} on {} gets {}'s statuses already, as forge {} (`forge remove {}` first to change it)",
            repo,
            args.api,
            p.name,
            same.subscription.id,
            same.subscription.id
        );
    }
    let s = notify::subscribe(
        &mut conn,
        &NewSubscription {
            project_id: p.id,
            builder_id: None,
            branch: None,
            kind: FORGE,
            target: &args.api,
            secret: Some(&token),
            created_at: db::now(),
            allow_private: args.allow_private_target,
            forge: Some(args.kind.as_str()),
            repo: Some(repo),
            context: Some(context),
        },
    )?;
    crate::say!(
        "forge {}: {} statuses of {} go to {} {} (contexts {context} and {context}/<builder>); the token is stored, \
         never shown",
        s.id,
        args.kind.as_str(),
        p.name,
        args.api,
        repo
    );
    crate::say!("(only full commit ids get statuses; `tbox-server notify log {}` shows how sending goes)", p.name);
    Ok(())
}

/// The token: the file's first line, trimmed. It goes into an HTTP header, so nothing that
/// could end one (a control character) is let through.
fn read_token(path: &std::path::Path) -> anyhow::Result<String> {
    use std::io::Read as _;
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(TOKEN_BYTES).read_to_string(&mut text))
        .with_context(|| format!("cannot read --token-file {}", path.display()))?;
    let token = text.lines().next().unwrap_or_default().trim().to_owned();
    if token.is_empty() {
        return Err(Usage(format!("--token-file {}: the file's first line is empty", path.display())).into());
    }
    if token.len() >= 1024 || token.chars().any(|c| c.is_control() || !c.is_ascii()) {
        return Err(Usage(format!(
            "--token-file {}: the first line is not a token (printable ASCII, under 1,024 characters)",
            path.display()
        ))
        .into());
    }
    Ok(token)
}

/// `OWNER/NAME` on GitHub and Gitea; on GitLab also `group/subgroup/name` or a numeric id.
fn check_repo(kind: ForgeKind, repo: &str) -> Result<(), String> {
    let segment_ok = |s: &str| {
        !s.is_empty()
            && s.len() <= 100
            && s != "."
            && s != ".."
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    };
    let parts: Vec<&str> = repo.split('/').collect();
    let ok = match kind {
        ForgeKind::Gitlab => {
            (parts.len() == 1 && repo.bytes().all(|b| b.is_ascii_digit()) && !repo.is_empty())
                || (parts.len() >= 2 && parts.len() <= 20 && parts.iter().all(|p| segment_ok(p)))
        }
        ForgeKind::Github | ForgeKind::Gitea => parts.len() == 2 && parts.iter().all(|p| segment_ok(p)),
    };
    if ok {
        Ok(())
    } else if kind == ForgeKind::Gitlab {
        Err("a GitLab project is GROUP/NAME (subgroups allowed) or its numeric id".to_owned())
    } else {
        Err("a repository is OWNER/NAME: letters, digits, '-', '_' and '.'".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repositories_are_names_not_paths() {
        assert!(check_repo(ForgeKind::Github, "tbox-ci/tbox").is_ok());
        assert!(check_repo(ForgeKind::Gitea, "me/my.repo_1").is_ok());
        assert!(check_repo(ForgeKind::Gitlab, "group/sub/name").is_ok());
        assert!(check_repo(ForgeKind::Gitlab, "12345").is_ok());
        for bad in ["tbox", "a/b/c", "../x", "a/..", "a/b?c", "a/b#", "a /b", "a/%2e%2e", ""] {
            assert!(check_repo(ForgeKind::Github, bad).is_err(), "{bad}");
        }
        assert!(check_repo(ForgeKind::Gitlab, "a/../b").is_err());
    }
}
