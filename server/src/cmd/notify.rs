//! `tbox-server notify add | list | remove | log`: who is told about status changes, and how
//! telling them went.

use anyhow::{Context as _, bail};

use crate::cli::{NotifyAddArgs, NotifyCommand};
use crate::db::models::NewSubscription;
use crate::db::{self, builders, notify, projects};
use crate::notify::send::RETRY_FOR;

pub fn run(cmd: NotifyCommand) -> anyhow::Result<()> {
    match cmd {
        NotifyCommand::Add(args) => add(&args),
        NotifyCommand::List(args) => {
            let mut conn = super::connect(&args.db)?;
            let project = match &args.project {
                Some(name) => {
                    Some(projects::by_name(&mut conn, name)?.with_context(|| format!("no project named {name:?}"))?.id)
                }
                None => None,
            };
            let failing_before = db::now() - RETRY_FOR;
            let listed = notify::list(&mut conn, project)?;
            if listed.is_empty() {
                crate::say!("no subscriptions (add one with `tbox-server notify add`)");
            }
            for l in listed {
                let s = &l.subscription;
                let health = match s.failing_since {
                    Some(t) if t < failing_before => format!("FAILING since {} UTC", t.format("%Y-%m-%d %H:%M")),
                    Some(t) => format!("last attempt failed (since {} UTC)", t.format("%Y-%m-%d %H:%M")),
                    None => "ok".to_owned(),
                };
                crate::say!(
                    "{}\t{}\t{} {}\t{}\t{}",
                    s.id,
                    l.project,
                    s.kind,
                    without_password(&s.target),
                    scope(l.builder.as_deref(), s.branch.as_deref()),
                    health
                );
            }
            Ok(())
        }
        NotifyCommand::Remove(args) => {
            let mut conn = super::connect(&args.db)?;
            if !notify::unsubscribe(&mut conn, args.id)? {
                bail!("no subscription {} (see `tbox-server notify list`)", args.id);
            }
            crate::say!("subscription {} removed", args.id);
            Ok(())
        }
        NotifyCommand::Log(args) => {
            let mut conn = super::connect(&args.db)?;
            let p = projects::by_name(&mut conn, &args.project)?
                .with_context(|| format!("no project named {:?}", args.project))?;
            if let Some(id) = args.subscription
                && !notify::list(&mut conn, Some(p.id))?.iter().any(|l| l.subscription.id == id)
            {
                bail!("project {} has no subscription {id} (see `tbox-server notify list {}`)", p.name, p.name);
            }
            for s in notify::failing(&mut conn, p.id, db::now() - RETRY_FOR)? {
                if args.subscription.is_none_or(|id| id == s.id) {
                    crate::say!(
                        "subscription {} ({} {}) has failed every attempt since {} UTC",
                        s.id,
                        s.kind,
                        without_password(&s.target),
                        s.failing_since.map(|t| t.format("%Y-%m-%d %H:%M").to_string()).unwrap_or_default()
                    );
                }
            }
            let rows = notify::log(&mut conn, p.id, args.subscription, args.limit)?;
            if rows.is_empty() {
                crate::say!("no deliveries yet for {}", p.name);
            }
            for r in rows {
                let (d, n) = (&r.delivery, &r.notification);
                let facts: crate::notify::Facts = serde_json::from_str(&n.facts).unwrap_or_default();
                crate::say!(
                    "{} UTC\t{}\tsubscription {} ({})\t{}\t{} attempt(s){}\t{}\t{}",
                    d.created_at.format("%Y-%m-%d %H:%M:%S"),
                    crate::notify::message::summary(&n.event, &facts),
                    r.subscription.id,
                    r.subscription.kind,
                    d.state,
                    d.attempts,
                    match (d.state.as_str(), d.last_attempt_at) {
                        ("pending", _) if d.attempts > 0 =>
                            format!(", next at {} UTC", d.next_attempt_at.format("%H:%M:%S")),
                        (_, Some(t)) => format!(", last at {} UTC", t.format("%H:%M:%S")),
                        _ => String::new(),
                    },
                    match (d.state.as_str(), &d.last_answer) {
                        (_, Some(a)) => a.as_str(),
                        ("pending", None) if d.attempts > 0 => "(being sent, or its sender stopped mid-attempt)",
                        ("pending", None) if r.subscription.kind == "email" => "(waiting for a server with --smtp)",
                        _ => "-",
                    },
                    d.uid
                );
            }
            Ok(())
        }
    }
}

fn scope(builder: Option<&str>, branch: Option<&str>) -> String {
    match (builder, branch) {
        (None, None) => "all builders, all branches".to_owned(),
        (Some(b), None) => format!("builder {b}, all branches"),
        (None, Some(br)) => format!("all builders, branch {br}"),
        (Some(b), Some(br)) => format!("builder {b}, branch {br}"),
    }
}

fn add(args: &NotifyAddArgs) -> anyhow::Result<()> {
    let mut conn = super::connect(&args.db)?;
    let p =
        projects::by_name(&mut conn, &args.project)?.with_context(|| format!("no project named {:?}", args.project))?;
    let builder_id = match &args.builder {
        Some(name) => Some(
            builders::by_name(&mut conn, name)?
                .with_context(|| format!("no builder named {name:?} (see `tbox-server builder list`)"))?
                .id,
        ),
        None => None,
    };
    if let Some(b) = &args.branch
        && (b.is_empty() || b.len() > 255 || b.chars().any(char::is_control))
    {
        bail!("--branch: a branch name is 1 to 255 characters, none of them control characters");
    }
    let mut generated = None;
    let (kind, target, secret) = match (&args.webhook, &args.email) {
        (Some(url), None) => {
            let secret = match (&args.secret, &args.secret_file) {
                (Some(s), _) => s.clone(),
                (None, Some(path)) => std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read --secret-file {}", path.display()))?
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .trim()
                    .to_owned(),
                (None, None) => {
                    let mut b = [0u8; 24];
                    openssl::rand::rand_bytes(&mut b).context("cannot make a random secret")?;
                    let s = tbox_protocol::hex(&b);
                    generated = Some(s.clone());
                    s
                }
            };
            if secret.is_empty() {
                bail!("the webhook secret is empty");
            }
            if !args.allow_private_target {
                match crate::notify::target::check_url(url) {
                    Ok(None) => {}
                    Ok(Some(note)) => crate::say!("note: {note}"),
                    Err(why) => {
                        return Err(crate::cmd::Usage(format!(
                            "--webhook {url}: {why}; webhooks go to public addresses only (an inside receiver of \
                             yours: add --allow-private-target)"
                        ))
                        .into());
                    }
                }
            }
            ("webhook", url.clone(), Some(secret))
        }
        (None, Some(addr)) => ("email", addr.clone(), None),
        _ => bail!("give either --webhook URL or --email ADDR"),
    };
    if let Some(same) = notify::list(&mut conn, Some(p.id))?.into_iter().find(|l| {
        let s = &l.subscription;
        s.kind == kind && s.target == target && s.builder_id == builder_id && s.branch == args.branch
    }) {
        bail!(
            "{} is subscribed to these changes already, as subscription {} (`notify remove {}` first to change it)",
            target,
            same.subscription.id,
            same.subscription.id
        );
    }
    if let Some(id) = builder_id
        && !builders::may_report(&mut conn, id, p.id)?
    {
        eprintln!(
            "note: builder {:?} may not report for {} (yet): this subscription says nothing until it may",
            args.builder.as_deref().unwrap_or_default(),
            p.name
        );
    }
    let s = notify::subscribe(
        &mut conn,
        &NewSubscription {
            project_id: p.id,
            builder_id,
            branch: args.branch.as_deref(),
            kind,
            target: &target,
            secret: secret.as_deref(),
            created_at: db::now(),
            allow_private: args.allow_private_target,
            forge: None,
            repo: None,
            context: None,
        },
    )?;
    crate::say!(
        "subscription {}: {} {} for {} ({})",
        s.id,
        kind,
        target,
        p.name,
        scope(args.builder.as_deref(), args.branch.as_deref())
    );
    if kind == "email" {
        crate::say!("(e-mail is sent by server processes started with `serve --smtp URL --mail-from ADDR`)");
    }
    if let Some(secret) = generated {
        crate::say!("secret: {secret}");
        crate::say!("(each body is signed: Tbox-Signature-256: sha256=<hex HMAC-SHA256(secret, body)>)");
    }
    Ok(())
}

/// A URL with any password in it replaced by `***`, for listing.
fn without_password(target: &str) -> String {
    match url::Url::parse(target) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => target.to_owned(),
    }
}
