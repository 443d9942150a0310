//! `tbox-report check`: is everything in place for `run`?

use crate::cli::Common;
use crate::client::{Client, Sent};
use crate::config::{self, Config};
use crate::{exit, keyfile, spool};

pub fn run(common: &Common) -> anyhow::Result<u8> {
    let path = config::config_path(common.config.as_deref());
    let config = Config::load(&path)?;
    println!("config   {} is valid: builder {} → {}", path.display(), config.builder, config.server);
    let key = keyfile::load(&config.key_path())?;
    println!(
        "key      {} ({} bits, {})",
        config.key_path().display(),
        key.public_key().bits(),
        key.public_key().fingerprint()
    );
    let client = Client::new(&config.server, &config.builder, key.clone());
    let mut problems = 0;
    match client.get_as_builder(&format!("/api/v1/builders/{}", config.builder)) {
        Sent::Delivered(v) => {
            let status = v["status"].as_str().unwrap_or("?");
            let mine = key.public_key().fingerprint();
            let key_known = v["keys"]
                .as_array()
                .is_some_and(|ks| ks.iter().any(|k| k["fingerprint"] == mine.as_str() && k["revoked"] == false));
            println!("server   reachable; builder {} is {status}", config.builder);
            if status != "active" {
                println!(
                    "         ! reports are refused until an admin runs: tbox-server builder approve {}",
                    config.builder
                );
                problems += 1;
            }
            if !key_known {
                println!("         ! the server does not know this key (or has revoked it)");
                problems += 1;
            }
        }
        Sent::Rejected { status: 404, .. } => {
            println!(
                "server   reachable, but builder {} is not registered (tbox-report register --project P)",
                config.builder
            );
            problems += 1;
        }
        Sent::Rejected { status, message } => {
            println!("server   answered {status}: {message}");
            problems += 1;
        }
        Sent::Unreachable(e) => {
            println!("server   ! cannot reach {}: {e}", config.server);
            problems += 1;
        }
        Sent::NotTbox(e) => {
            println!("server   ! {e}");
            problems += 1;
        }
    }
    let waiting = spool::pending(&config.spool_dir())?.len();
    println!("spool    {} ({waiting} report(s) waiting)", config.spool_dir().display());
    for p in &config.projects {
        let workdir = config::expand(&p.workdir);
        let revision = super::git_revision(&workdir);
        let last = super::run::last_revision(&config, &p.name);
        let plan = match (&revision, p.git.is_some() || p.recipe.is_some()) {
            (_, true) => "fetches, then builds if the revision changed".to_owned(),
            (Some(r), false) if last.as_deref() == Some(r.as_str()) => {
                format!("skips: {r} was reported already")
            }
            (Some(r), false) => format!("builds revision {r}"),
            (None, false) => "builds (not a git checkout, so every run builds)".to_owned(),
        };
        match &p.recipe {
            Some(pin) => {
                println!("project  {} ({}): {}; steps from the recipe signed by {pin}", p.name, p.branch, plan);
                problems += check_recipe(&config, p, pin);
            }
            None => {
                let steps: Vec<&str> = p.steps.iter().map(|s| s.name.as_str()).collect();
                println!("project  {} ({}): {}; steps {}", p.name, p.branch, plan, steps.join(" → "));
            }
        }
        if !workdir.is_dir() && p.git.is_none() && p.recipe.is_none() {
            println!("         ! workdir {} does not exist", workdir.display());
            problems += 1;
        }
    }
    if problems > 0 {
        println!("{problems} problem(s) found");
        return Ok(exit::ERROR);
    }
    println!("all good");
    Ok(exit::OK)
}

/// What `run` would think of the project's recipe now; the number of problems found.
fn check_recipe(config: &config::Config, p: &config::Project, pin: &str) -> usize {
    use crate::trust::{self, NoRecipe};
    match trust::obtain(&trust::agent(), config.server.trim_end_matches('/'), &p.name, pin) {
        Ok(v) => {
            let r = &v.recipe;
            println!(
                "recipe   version {} signed by {}, expires {}; steps {}",
                r.version,
                v.key,
                r.expires.format("%Y-%m-%d %H:%M UTC"),
                r.steps.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(" → ")
            );
            let missing: Vec<&str> =
                r.requires.iter().filter(|c| !config.capabilities.contains(c)).map(String::as_str).collect();
            if !missing.is_empty() {
                println!("         requires {}, not in `capabilities`: `run` skips it", missing.join(", "));
            }
            if r.network && !config.network_for(p) {
                println!("         needs the network, and allow_network is false: `run` skips it");
            }
            if r.allows_branch(&p.branch) {
                0
            } else {
                println!("         ! does not allow branch {:?}: `run` refuses it", p.branch);
                1
            }
        }
        Err(NoRecipe::NonePublished(why)) => {
            println!("recipe   {why}");
            0
        }
        Err(NoRecipe::Refused(why)) => {
            println!("recipe   ! REFUSED: {why}");
            1
        }
        Err(NoRecipe::Unreachable(why)) => {
            println!("recipe   ! {why}");
            1
        }
    }
}
